"""CPU implementation of zoo::dmc_decode_attention: the reference's state update, and attention over only
the slots in use: the cache is sliced (a view, no copy) to the fullest head's slots, read once on the host,
and the mask is built only when heads are ragged."""

import torch

from zoo.ops.dmc_decode_attention.reference import decode_state_update, new_slot


def dmc_decode_attention_cpu(
    q,
    k,
    v,
    cos,
    sin,
    positions,
    k_cache,
    v_cache,
    slots,
    ksum,
    vsum,
    z,
    glen,
    ring_k,
    ring_v,
    ring_z,
    init_val,
    window,
    scale,
    merge_period=0,
):
    B, H, D = q.shape
    Hkv = k_cache.shape[1]
    state = decode_state_update(
        q, k, v, positions, slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z, init_val, window, merge_period
    )
    new_slots, new_ksum, new_vsum, new_z = state[:4]
    q_rot, new_k, new_v = new_slot(q, new_ksum, new_vsum, new_z, cos, sin, k_cache.dtype)
    cached = new_slots - 1  # slots read from the cache; the last one is the op's own new_k, new_v
    least, n = torch.stack(torch.aminmax(cached)).tolist()  # one host sync
    keys, values = k_cache[:, :, :n], v_cache[:, :, :n]
    qg = q_rot.to(k_cache.dtype).view(B, Hkv, H // Hkv, D)
    scores = torch.cat([qg @ keys.transpose(-1, -2), qg @ new_k[..., None]], dim=-1).float() * scale
    if least < n:
        visible = torch.arange(n + 1, device=q.device) < cached[..., None, None]
        scores = scores.masked_fill(~visible & (torch.arange(n + 1, device=q.device) < n), float("-inf"))
    probs = scores.softmax(dim=-1).to(v_cache.dtype)
    out = probs[..., :n] @ values + probs[..., n:] * new_v[:, :, None]
    return (out.reshape(B, H, D).to(q.dtype), new_k, new_v, *state)
