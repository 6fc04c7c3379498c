"""Triton kernel of zoo::dmc_decode_attention: one program per (row, KV head) does the small state update
(decisions, sums, window ring, the merged key rotated at the row's position) and then attends with the G
query heads of that KV head together over only that head's cached slots, in blocks of BLOCK_T slots with
an online softmax, and finally over the new or merged slot held in registers.

RoPE is rotate-half: out[d] = x[d] cos[d] + sign(d) x[partner(d)] sin[d], partner(d) = (d + D/2) mod D;
the partner channels are loaded (or computed) directly, so no lane shuffles are needed."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def dmc_decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    ksum_ptr, vsum_ptr, z_ptr, glen_ptr, ring_k_ptr, ring_v_ptr, ring_z_ptr,
    out_ptr, new_k_ptr, new_v_ptr, slots_out_ptr, ksum_out_ptr, vsum_out_ptr, z_out_ptr, glen_out_ptr,
    ring_k_out_ptr, ring_v_out_ptr, ring_z_out_ptr,
    T, init_val, scale, eps, merge_period,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    b = bh // HKV
    h = bh % HKV
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    partner = (d + D // 2) % D
    sign = tl.where(d < D // 2, -1.0, 1.0)
    kept = d < D - 1  # channel D-1 is zeroed before and after RoPE
    partner_kept = d_mask & (partner < D - 1)
    pos = tl.load(pos_ptr + b)

    # decisions: alpha from the key's last channel (or the forced period), omega from the group's queries
    g = tl.arange(0, BLOCK_G)
    g_mask = g < G
    q_rows = (b * HKV * G + h * G + g) * D
    q_last = tl.load(q_ptr + q_rows + D - 1, mask=g_mask, other=0.0).to(tl.float32)
    omega = tl.sigmoid(tl.sum(q_last, axis=0) / G + init_val) + eps
    k_last = tl.load(k_ptr + bh * D + D - 1).to(tl.float32)
    forced = (pos % tl.maximum(merge_period, 1)) != 0
    merges = tl.where(merge_period > 0, forced, k_last - init_val > 0) & (pos > 0)
    alpha = tl.where(merges, 1.0, 0.0)

    # the open slot's sums, at the channels and at their RoPE partners
    k_in = tl.load(k_ptr + bh * D + d, mask=kept, other=0.0).to(tl.float32)
    k_in_p = tl.load(k_ptr + bh * D + partner, mask=partner_kept, other=0.0).to(tl.float32)
    v_in = tl.load(v_ptr + bh * D + d, mask=d_mask, other=0.0).to(tl.float32)
    glen = alpha * tl.load(glen_ptr + bh) + 1.0
    ksum = alpha * tl.load(ksum_ptr + bh * D + d, mask=d_mask, other=0.0) + omega * k_in
    ksum_p = alpha * tl.load(ksum_ptr + bh * D + partner, mask=d_mask, other=0.0) + omega * k_in_p
    vsum = alpha * tl.load(vsum_ptr + bh * D + d, mask=d_mask, other=0.0) + omega * v_in
    z = alpha * tl.load(z_ptr + bh) + omega
    if W > 0:
        # a group longer than W drops the token W steps back, held in the ring at index pos % W
        r = pos % W
        overflow = tl.where(glen > W, 1.0, 0.0)
        ring_row = bh * W * D + r * D
        ksum = ksum - overflow * tl.load(ring_k_ptr + ring_row + d, mask=d_mask, other=0.0)
        ksum_p = ksum_p - overflow * tl.load(ring_k_ptr + ring_row + partner, mask=d_mask, other=0.0)
        vsum = vsum - overflow * tl.load(ring_v_ptr + ring_row + d, mask=d_mask, other=0.0)
        z = z - overflow * tl.load(ring_z_ptr + bh * W + r)
        w = tl.arange(0, BLOCK_W)
        w_mask = w < W
        tile = bh * W * D + w[:, None] * D + d[None, :]
        tile_mask = w_mask[:, None] & d_mask[None, :]
        is_r = (w == r)[:, None]
        old_k = tl.load(ring_k_ptr + tile, mask=tile_mask, other=0.0)
        tl.store(ring_k_out_ptr + tile, tl.where(is_r, (omega * k_in)[None, :], old_k), mask=tile_mask)
        old_v = tl.load(ring_v_ptr + tile, mask=tile_mask, other=0.0)
        tl.store(ring_v_out_ptr + tile, tl.where(is_r, (omega * v_in)[None, :], old_v), mask=tile_mask)
        old_z = tl.load(ring_z_ptr + bh * W + w, mask=w_mask, other=0.0)
        tl.store(ring_z_out_ptr + bh * W + w, tl.where(w == r, omega, old_z), mask=w_mask)
    new_slots = tl.load(slots_ptr + bh) + 1 - merges.to(tl.int64)
    tl.store(slots_out_ptr + bh, new_slots)
    tl.store(glen_out_ptr + bh, glen)
    tl.store(z_out_ptr + bh, z)
    tl.store(ksum_out_ptr + bh * D + d, ksum, mask=d_mask)
    tl.store(vsum_out_ptr + bh * D + d, vsum, mask=d_mask)

    # the new or merged slot: key = RoPE_pos(ksum / z), value = vsum / z
    cos = tl.load(cos_ptr + b * D + d, mask=d_mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + b * D + d, mask=d_mask, other=0.0).to(tl.float32)
    key_p = tl.where(partner < D - 1, ksum_p / z, 0.0)
    new_k = tl.where(kept, (ksum / z) * cos + sign * key_p * sin, 0.0)
    new_v = vsum / z
    tl.store(new_k_ptr + bh * D + d, new_k.to(new_k_ptr.dtype.element_ty), mask=d_mask)
    tl.store(new_v_ptr + bh * D + d, new_v.to(new_v_ptr.dtype.element_ty), mask=d_mask)
    new_k = new_k.to(new_k_ptr.dtype.element_ty).to(tl.float32)  # attend to the slot as the cache holds it
    new_v = new_v.to(new_v_ptr.dtype.element_ty).to(tl.float32)

    # the G rotated queries
    q_tile = q_rows[:, None] + d[None, :]
    q_d = tl.load(q_ptr + q_tile, mask=g_mask[:, None] & kept[None, :], other=0.0).to(tl.float32)
    q_p = tl.load(q_ptr + q_rows[:, None] + partner[None, :], mask=g_mask[:, None] & partner_kept[None, :], other=0.0)
    q_rot = tl.where(kept[None, :], q_d * cos[None, :] + sign[None, :] * q_p.to(tl.float32) * sin[None, :], 0.0)

    # attention over this head's cached slots 0 .. new_slots-2, online softmax over blocks of slots
    n_cached = new_slots - 1
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    cache_base = bh * T * D
    for start in range(0, n_cached, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        t_mask = t < n_cached
        kv_offsets = cache_base + t[:, None] * D + d[None, :]
        kv_mask = t_mask[:, None] & d_mask[None, :]
        keys = tl.load(k_cache_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)
        scores = tl.sum(q_rot[:, None, :] * keys[None, :, :], axis=2) * scale  # (BLOCK_G, BLOCK_T)
        scores = tl.where(t_mask[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        correction = tl.exp(m_i - m_new)
        values = tl.load(v_cache_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)
        l_i = l_i * correction + tl.sum(p, axis=1)
        acc = acc * correction[:, None] + tl.sum(p[:, :, None] * values[None, :, :], axis=1)
        m_i = m_new
    own = tl.sum(q_rot * new_k[None, :], axis=1) * scale
    m_new = tl.maximum(m_i, own)
    correction = tl.exp(m_i - m_new)
    p_own = tl.exp(own - m_new)
    l_i = l_i * correction + p_own
    acc = acc * correction[:, None] + p_own[:, None] * new_v[None, :]
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_tile, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


def block_sizes(G: int, D: int, W: int) -> dict:
    block_g, block_d = triton.next_power_of_2(G), triton.next_power_of_2(D)
    block_t = max(16, min(128, 4096 // (block_g * block_d)))
    return {"BLOCK_G": block_g, "BLOCK_D": block_d, "BLOCK_T": block_t, "BLOCK_W": triton.next_power_of_2(max(W, 1))}


def dmc_decode_attention_triton(
    q, k, v, cos, sin, positions, k_cache, v_cache, slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z,
    init_val, window, scale, merge_period=0,
):  # fmt: skip
    B, H, D = q.shape
    Hkv, T = k_cache.shape[1], k_cache.shape[2]
    inputs = [t.contiguous() for t in (q, k, v, cos, sin, positions, k_cache, v_cache, slots)]
    state = [t.contiguous() for t in (ksum, vsum, z, glen, ring_k, ring_v, ring_z)]
    out = torch.empty_like(inputs[0])
    new_k = torch.empty(B, Hkv, D, dtype=k_cache.dtype, device=q.device)
    new_v = torch.empty(B, Hkv, D, dtype=v_cache.dtype, device=q.device)
    new_state = [torch.empty_like(inputs[8])] + [torch.empty_like(t) for t in state]
    if window == 0:  # no ring: the (empty) ring passes through
        new_state[5:] = [t.clone() for t in state[4:]]
    dmc_decode_attention_kernel[(B * Hkv,)](
        *inputs, *state, out, new_k, new_v, *new_state,
        T, float(init_val), float(scale), float(torch.finfo(q.dtype).eps), int(merge_period),
        HKV=Hkv, G=H // Hkv, D=D, W=window, **block_sizes(H // Hkv, D, window),
    )  # fmt: skip
    return (out, new_k, new_v, *new_state)


def _signature(dtype: str) -> dict[str, str]:
    pointers = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr")}
    pointers |= {"pos_ptr": "*i64", "k_cache_ptr": f"*{dtype}", "v_cache_ptr": f"*{dtype}", "slots_ptr": "*i64"}
    for prefix in ("", "_out"):
        for name in ("ksum", "vsum", "z", "glen", "ring_k", "ring_v", "ring_z"):
            pointers[f"{name}{prefix}_ptr"] = "*fp32"
        if prefix == "":
            pointers |= {"out_ptr": f"*{dtype}", "new_k_ptr": f"*{dtype}", "new_v_ptr": f"*{dtype}"}
            pointers["slots_out_ptr"] = "*i64"
    order = [
        "q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "pos_ptr", "k_cache_ptr", "v_cache_ptr", "slots_ptr",
        "ksum_ptr", "vsum_ptr", "z_ptr", "glen_ptr", "ring_k_ptr", "ring_v_ptr", "ring_z_ptr",
        "out_ptr", "new_k_ptr", "new_v_ptr", "slots_out_ptr", "ksum_out_ptr", "vsum_out_ptr", "z_out_ptr",
        "glen_out_ptr", "ring_k_out_ptr", "ring_v_out_ptr", "ring_z_out_ptr",
    ]  # fmt: skip
    signature = {name: pointers[name] for name in order}
    signature |= {"T": "i32", "init_val": "fp32", "scale": "fp32", "eps": "fp32", "merge_period": "i32"}
    constexprs = ("HKV", "G", "D", "W", "BLOCK_G", "BLOCK_D", "BLOCK_T", "BLOCK_W")
    return signature | {name: "constexpr" for name in constexprs}


TRITON_KERNELS = [
    KernelSpec(  # Llama-2 style MHA (the released DMC models), fp32
        name="dmc_decode_attention_mha",
        fn=dmc_decode_attention_kernel,
        signature=_signature("fp32"),
        constexprs={"HKV": 8, "G": 1, "D": 64, "W": 12, **block_sizes(1, 64, 12)},
    ),
    KernelSpec(  # GQA, 4 query heads per KV head, bf16, head size 128
        name="dmc_decode_attention_gqa",
        fn=dmc_decode_attention_kernel,
        signature=_signature("bf16"),
        constexprs={"HKV": 8, "G": 4, "D": 128, "W": 12, **block_sizes(4, 128, 12)},
    ),
]
