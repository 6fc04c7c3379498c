"""The one-shot DMC prefill cache build in plain PyTorch (docs/algorithms.md §1.4).

From the eval forward's tensors (hard decisions alpha, weights omega, the pooled inputs and their window
sums at every position, the rotated pooled keys and the pooled values) and each row's prompt length:
- the compacted slots: position j is kept when token j+1 did not merge into it (alpha_{j+1} = 0) or j is
  the row's last prompt token; the kept positions of each (row, KV head) fill slots 0, 1, ... in order
  (an exclusive cumsum of `keep` gives each its slot, then a scatter), the rest of the T slots are zero;
- the slot count per (row, KV head);
- the open slot's running state at the last prompt token: its window sums, weight, group length, and the
  ring of the weighted inputs of the group's last W tokens, at index position % W (zero elsewhere).
"""

import torch


def kept_positions(alpha: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, L) bool: position j holds a slot after the prompt (alpha_{j+1} = 0, or j is the last token)."""
    index = torch.arange(alpha.shape[-1], device=alpha.device)
    last = (lengths - 1)[:, None, None]
    next_appends = torch.cat([alpha[..., 1:] == 0, torch.ones_like(alpha[..., :1], dtype=torch.bool)], dim=-1)
    return (index <= last) & (next_appends | (index == last))


def open_slot_state(alpha, omega, kv, acc, weight, lengths, window: int):
    """(ksum, vsum, z, glen, ring_k, ring_v, ring_z) of the open slot at each row's last prompt token."""
    B, Hkv, L = alpha.shape
    D = kv.shape[-1] // 2
    index = torch.arange(L, device=alpha.device)
    at_last = (lengths - 1)[:, None, None].expand(B, Hkv, 1)
    acc_last = acc.float().gather(2, at_last[..., None].expand(-1, -1, -1, 2 * D))[:, :, 0]
    z = weight.float().gather(2, at_last)[..., 0]
    group_start = torch.where(alpha == 0, index, torch.zeros_like(index)).cummax(dim=-1).values
    start = group_start.gather(2, at_last)  # (B, Hkv, 1)
    glen = (at_last - start + 1)[..., 0].float()
    # ring entry r holds the position s <= last with s % W == r, the most recent one, if s is in the group
    ring = torch.arange(window, device=alpha.device)
    source = at_last - (at_last - ring) % max(window, 1)  # (B, Hkv, W)
    in_group = (source >= start).float()
    source = source.clamp(min=0)
    ring_z = omega.float().gather(2, source) * in_group
    ring_kv = kv.float().gather(2, source[..., None].expand(-1, -1, -1, 2 * D)) * ring_z[..., None]
    ksum, vsum = acc_last[..., :D].clone(), acc_last[..., D:].clone()  # outputs must not alias each other
    return ksum, vsum, z, glen, ring_kv[..., :D].clone(), ring_kv[..., D:].clone(), ring_z


def dmc_prefill_cache_ref(
    alpha: torch.Tensor,
    omega: torch.Tensor,
    kv: torch.Tensor,
    acc: torch.Tensor,
    weight: torch.Tensor,
    k_slot: torch.Tensor,
    v_slot: torch.Tensor,
    lengths: torch.Tensor,
    capacity: int,
    window: int,
):
    """alpha, omega, weight (B, Hkv, L); kv, acc (B, Hkv, L, 2D): pooled input [k (channel D-1 zeroed), v]
    and its window sums; k_slot, v_slot (B, Hkv, L, D); lengths (B,); capacity T: slots per head.

    Returns (k (B, Hkv, T, D), v, slots (B, Hkv) int64, ksum, vsum (B, Hkv, D), z, glen (B, Hkv),
    ring_k, ring_v (B, Hkv, W, D), ring_z (B, Hkv, W)); the small state in fp32. Positions a head would
    keep beyond T are dropped (the caller sizes T for the whole prompt)."""
    B, Hkv, L = alpha.shape
    D = k_slot.shape[-1]
    keep = kept_positions(alpha, lengths)
    slot_of = keep.long().cumsum(dim=-1) - 1
    slot_of = torch.where(keep, slot_of.clamp(max=capacity), capacity)  # slot T: dropped
    slot_index = slot_of[..., None].expand(-1, -1, -1, D)
    slots_shape = (B, Hkv, capacity + 1, D)
    k_cache = k_slot.new_zeros(slots_shape).scatter(2, slot_index, k_slot)[:, :, :capacity].contiguous()
    v_cache = v_slot.new_zeros(slots_shape).scatter(2, slot_index, v_slot)[:, :, :capacity].contiguous()
    return (k_cache, v_cache, keep.sum(dim=-1), *open_slot_state(alpha, omega, kv, acc, weight, lengths, window))
