"""Triton kernel of zoo::dmc_prefill_cache: one program per (row, KV head) walks the prompt in blocks of
BLOCK_L positions, gives each kept position its slot (a running offset plus an exclusive cumsum of `keep`
within the block) and stores its rotated key and value there, tracks the start of the trailing group,
zeroes the slots past the kept ones (so the outputs need no fill before the launch), and finally writes
the open slot's sums, weight, group length and window ring at the last prompt token."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def dmc_prefill_cache_kernel(
    alpha_ptr, omega_ptr, kv_ptr, acc_ptr, weight_ptr, k_slot_ptr, v_slot_ptr, lengths_ptr,
    k_out_ptr, v_out_ptr, slots_ptr, ksum_ptr, vsum_ptr, z_ptr, glen_ptr, ring_k_ptr, ring_v_ptr, ring_z_ptr,
    L, T,
    HKV: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    b = bh // HKV
    last = tl.load(lengths_ptr + b) - 1
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    row = bh * L  # this (row, KV head)'s positions
    filled = tl.zeros([], tl.int64)
    start = tl.zeros([], tl.int64)
    for block in range(0, L, BLOCK_L):
        j = block + tl.arange(0, BLOCK_L)
        in_prompt = j <= last
        alpha = tl.load(alpha_ptr + row + j, mask=j < L, other=1.0).to(tl.float32)
        alpha_next = tl.load(alpha_ptr + row + j + 1, mask=j + 1 < L, other=0.0).to(tl.float32)
        keep = in_prompt & ((alpha_next == 0) | (j == last))
        keep_count = keep.to(tl.int64)
        slot = filled + tl.cumsum(keep_count, axis=0) - keep_count
        store = keep & (slot < T)
        src = (row + j)[:, None] * D + d[None, :]
        dst = (bh * T + slot)[:, None] * D + d[None, :]
        tile_mask = store[:, None] & d_mask[None, :]
        tl.store(k_out_ptr + dst, tl.load(k_slot_ptr + src, mask=tile_mask, other=0.0), mask=tile_mask)
        tl.store(v_out_ptr + dst, tl.load(v_slot_ptr + src, mask=tile_mask, other=0.0), mask=tile_mask)
        filled += tl.sum(keep_count, axis=0)
        start = tl.maximum(start, tl.max(tl.where(in_prompt & (alpha == 0), j, 0), axis=0))
    tl.store(slots_ptr + bh, filled)
    for block in range(0, T, BLOCK_L):  # the slots no kept position reached hold zeros
        s = block + tl.arange(0, BLOCK_L)
        unused = (s >= filled) & (s < T)
        dst = (bh * T + s)[:, None] * D + d[None, :]
        tile_mask = unused[:, None] & d_mask[None, :]
        tl.store(k_out_ptr + dst, tl.zeros([BLOCK_L, BLOCK_D], tl.float32), mask=tile_mask)
        tl.store(v_out_ptr + dst, tl.zeros([BLOCK_L, BLOCK_D], tl.float32), mask=tile_mask)

    at_last = (row + last) * 2 * D
    tl.store(ksum_ptr + bh * D + d, tl.load(acc_ptr + at_last + d, mask=d_mask, other=0.0).to(tl.float32), mask=d_mask)
    v_sum = tl.load(acc_ptr + at_last + D + d, mask=d_mask, other=0.0).to(tl.float32)
    tl.store(vsum_ptr + bh * D + d, v_sum, mask=d_mask)
    tl.store(z_ptr + bh, tl.load(weight_ptr + row + last).to(tl.float32))
    tl.store(glen_ptr + bh, (last - start + 1).to(tl.float32))
    if W > 0:
        # ring entry r: the latest position s <= last with s % W == r, when s is in the trailing group
        r = tl.arange(0, BLOCK_W)
        r_mask = r < W
        source = last - ((last - r) % W + W) % W
        in_group = r_mask & (source >= start)
        source = tl.maximum(source, 0)
        w = tl.load(omega_ptr + row + source, mask=in_group, other=0.0).to(tl.float32)
        tl.store(ring_z_ptr + bh * W + r, w, mask=r_mask)
        src = (row + source)[:, None] * 2 * D + d[None, :]
        load_mask = in_group[:, None] & d_mask[None, :]
        dst = (bh * W + r)[:, None] * D + d[None, :]
        store_mask = r_mask[:, None] & d_mask[None, :]
        ring_k = tl.load(kv_ptr + src, mask=load_mask, other=0.0).to(tl.float32) * w[:, None]
        ring_v = tl.load(kv_ptr + src + D, mask=load_mask, other=0.0).to(tl.float32) * w[:, None]
        tl.store(ring_k_ptr + dst, ring_k, mask=store_mask)
        tl.store(ring_v_ptr + dst, ring_v, mask=store_mask)


def block_sizes(D: int, W: int) -> dict:
    block_d = triton.next_power_of_2(D)
    return {"BLOCK_L": max(16, 4096 // block_d), "BLOCK_D": block_d, "BLOCK_W": triton.next_power_of_2(max(W, 1))}


def dmc_prefill_cache_triton(alpha, omega, kv, acc, weight, k_slot, v_slot, lengths, capacity, window):
    B, Hkv, L = alpha.shape
    D = k_slot.shape[-1]
    f32 = dict(dtype=torch.float32, device=alpha.device)
    outputs = (
        k_slot.new_empty(B, Hkv, capacity, D),
        v_slot.new_empty(B, Hkv, capacity, D),
        torch.empty(B, Hkv, dtype=torch.int64, device=alpha.device),
        torch.empty(B, Hkv, D, **f32),
        torch.empty(B, Hkv, D, **f32),
        torch.empty(B, Hkv, **f32),
        torch.empty(B, Hkv, **f32),
        torch.empty(B, Hkv, window, D, **f32),
        torch.empty(B, Hkv, window, D, **f32),
        torch.empty(B, Hkv, window, **f32),
    )
    launch_into(outputs, alpha, omega, kv, acc, weight, k_slot, v_slot, lengths, window)
    return outputs


def launch_into(outputs, alpha, omega, kv, acc, weight, k_slot, v_slot, lengths, window):
    """Run the kernel into `outputs` (every element is written: they may hold anything before, as a
    TensorRT plugin's outputs do)."""
    B, Hkv, L = alpha.shape
    capacity, D = outputs[0].shape[2], k_slot.shape[-1]
    inputs = [t.contiguous() for t in (alpha, omega, kv, acc, weight, k_slot, v_slot, lengths)]
    dmc_prefill_cache_kernel[(B * Hkv,)](
        *inputs, *outputs, L, capacity, HKV=Hkv, D=D, W=window, **block_sizes(D, window)
    )


def _signature(dtype: str) -> dict[str, str]:
    names = {"alpha_ptr": "*fp32", "omega_ptr": "*fp32", "kv_ptr": f"*{dtype}", "acc_ptr": "*fp32"}
    names |= {"weight_ptr": "*fp32", "k_slot_ptr": f"*{dtype}", "v_slot_ptr": f"*{dtype}", "lengths_ptr": "*i64"}
    names |= {"k_out_ptr": f"*{dtype}", "v_out_ptr": f"*{dtype}", "slots_ptr": "*i64"}
    names |= {name: "*fp32" for name in ("ksum_ptr", "vsum_ptr", "z_ptr", "glen_ptr")}
    names |= {name: "*fp32" for name in ("ring_k_ptr", "ring_v_ptr", "ring_z_ptr")}
    names |= {"L": "i32", "T": "i32"}
    return names | {name: "constexpr" for name in ("HKV", "D", "W", "BLOCK_L", "BLOCK_D", "BLOCK_W")}


TRITON_KERNELS = [
    KernelSpec(
        name="dmc_prefill_cache",
        fn=dmc_prefill_cache_kernel,
        signature=_signature("bf16"),
        constexprs={"HKV": 8, "D": 128, "W": 12, **block_sizes(128, 12)},
    ),
]
