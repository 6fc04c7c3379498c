"""CPU implementation of zoo::dmc_prefill_cache. The slots are compacted with one stable sort of the
dropped flags (kept positions first) and a gather of only the slots that the fullest head uses (read
once on the host), instead of a scatter over every position into a zeroed (T + 1)-slot buffer; the
small state is the reference's (a few gathers)."""

import torch

from zoo.ops.dmc_prefill_cache.reference import kept_positions, open_slot_state


def dmc_prefill_cache_cpu(alpha, omega, kv, acc, weight, k_slot, v_slot, lengths, capacity, window):
    B, Hkv, L = alpha.shape
    D = k_slot.shape[-1]
    keep = kept_positions(alpha, lengths)
    slots = keep.sum(dim=-1)
    used = min(int(slots.max()), capacity)
    order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices[..., :used, None].expand(-1, -1, -1, D)
    filled = (torch.arange(used, device=alpha.device) < slots[..., None])[..., None]  # past a head's count: zero
    k_cache = k_slot.new_zeros(B, Hkv, capacity, D)
    v_cache = v_slot.new_zeros(B, Hkv, capacity, D)
    k_cache[:, :, :used] = torch.where(filled, k_slot.gather(2, order), 0)
    v_cache[:, :, :used] = torch.where(filled, v_slot.gather(2, order), 0)
    return (k_cache, v_cache, slots, *open_slot_state(alpha, omega, kv, acc, weight, lengths, window))
