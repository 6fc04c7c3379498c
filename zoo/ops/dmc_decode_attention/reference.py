"""The decode region of one DMC attention layer in plain PyTorch (docs/algorithms.md §1.1, §1.2).

One new token per row: its decisions (alpha per KV head from the pre-RoPE key's last channel, omega from
the mean of the group's query last channels), the open slot's update (append: a new slot; merge: the
weighted mean of the last <= W tokens of the group, with the window ring), RoPE of the merged key and of
the query at the row's position (channel D-1 zeroed), and attention of the G query heads of each KV head
over that head's slots 0 .. slots-2 of the cache plus the new or merged slot, which is taken from the
op's own output (on a merge the cache still holds the stale value of that slot).

Static shapes: the reference attends over all T cache slots with a mask.
"""

import torch


def zero_last_channel(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[..., :-1], torch.zeros_like(x[..., -1:])], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x (..., D) with cos, sin broadcast to it, channel D-1 zeroed in and out."""
    x = zero_last_channel(x)
    x1, x2 = x.chunk(2, dim=-1)
    return zero_last_channel(x * cos + torch.cat([-x2, x1], dim=-1) * sin)


def decode_state_update(
    q, k, v, positions, slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z, init_val, window, merge_period
):
    """Decisions and the open slot's new state. Returns (slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z),
    all fresh tensors; sums in fp32."""
    B, H, _ = q.shape
    Hkv = k.shape[1]
    logits = k[..., -1].float() - init_val  # (B, Hkv)
    q_group_mean = q[..., -1].float().view(B, Hkv, H // Hkv).mean(dim=-1)
    omega = torch.sigmoid(q_group_mean + init_val) + torch.finfo(q.dtype).eps
    if merge_period > 0:  # benchmark control: exactly every merge_period-th token opens a slot
        alpha = (positions % merge_period != 0)[:, None].float().expand(B, Hkv)
    else:
        alpha = (logits > 0).float()
    alpha = alpha * (positions > 0)[:, None]  # the first token always appends
    k_in, v_in = zero_last_channel(k).float(), v.float()
    glen = alpha * glen + 1
    ksum = alpha[..., None] * ksum + omega[..., None] * k_in
    vsum = alpha[..., None] * vsum + omega[..., None] * v_in
    z = alpha * z + omega
    if window > 0:
        # a group longer than W drops the token W steps back, held in the ring at the same index
        slot = (positions % window)[:, None, None].expand(B, Hkv, 1)
        ring_index = slot[..., None].expand(-1, -1, -1, k.shape[-1])
        overflow = (glen > window).float()
        ksum = ksum - overflow[..., None] * ring_k.gather(2, ring_index)[:, :, 0]
        vsum = vsum - overflow[..., None] * ring_v.gather(2, ring_index)[:, :, 0]
        z = z - overflow * ring_z.gather(2, slot)[..., 0]
        ring_k = ring_k.scatter(2, ring_index, (omega[..., None] * k_in)[:, :, None])
        ring_v = ring_v.scatter(2, ring_index, (omega[..., None] * v_in)[:, :, None])
        ring_z = ring_z.scatter(2, slot, omega[..., None])
    else:
        ring_k, ring_v, ring_z = ring_k.clone(), ring_v.clone(), ring_z.clone()
    slots = slots + 1 - alpha.long()
    return slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z


def new_slot(q, ksum, vsum, z, cos, sin, cache_dtype):
    """The rotated query (B, H, D) and the new or merged slot's key and value (B, Hkv, D)."""
    key = rotate((ksum / z[..., None]).to(cache_dtype), cos[:, None], sin[:, None])
    value = (vsum / z[..., None]).to(cache_dtype)
    return rotate(q, cos[:, None], sin[:, None]), key, value


def dmc_decode_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    ksum: torch.Tensor,
    vsum: torch.Tensor,
    z: torch.Tensor,
    glen: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    ring_z: torch.Tensor,
    init_val: float,
    window: int,
    scale: float,
    merge_period: int = 0,
):
    """q (B, H, D), k, v (B, Hkv, D): the new token's pre-RoPE projections; cos, sin (B, D): RoPE at each
    row's position; positions (B,); k_cache, v_cache (B, Hkv, T, D); the small state as in zoo.nn.dmc.

    Returns (out (B, H, D), new_k, new_v (B, Hkv, D): the slot to write at index slots-1, slots, ksum,
    vsum, z, glen, ring_k, ring_v, ring_z): the updated state."""
    B, H, D = q.shape
    Hkv, T = k_cache.shape[1], k_cache.shape[2]
    state = decode_state_update(
        q, k, v, positions, slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z, init_val, window, merge_period
    )
    new_slots, new_ksum, new_vsum, new_z = state[:4]
    q_rot, new_k, new_v = new_slot(q, new_ksum, new_vsum, new_z, cos, sin, k_cache.dtype)
    qg = q_rot.to(k_cache.dtype).view(B, Hkv, H // Hkv, D)
    cached_scores = (qg @ k_cache.transpose(-1, -2)).float() * scale  # (B, Hkv, G, T)
    visible = torch.arange(T, device=q.device) < (new_slots - 1)[..., None, None]
    cached_scores = cached_scores.masked_fill(~visible, float("-inf"))
    own_score = (qg @ new_k[..., None]).float() * scale  # (B, Hkv, G, 1)
    probs = torch.cat([cached_scores, own_score], dim=-1).softmax(dim=-1).to(v_cache.dtype)
    out = probs[..., :T] @ v_cache + probs[..., T:] * new_v[:, :, None]
    return (out.reshape(B, H, D).to(q.dtype), new_k, new_v, *state)
