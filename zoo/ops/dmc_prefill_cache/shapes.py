"""Output shapes and dtypes of zoo::dmc_prefill_cache from its input shapes and dtypes (plain arithmetic
on sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT
plugin both use it. `capacity` is a size argument: a SymInt in torch, an int attribute in TensorRT."""

import torch


def output_specs(shapes, dtypes, capacity, window):
    """(alpha, omega, kv, acc, weight, k_slot (B, Hkv, L, D), v_slot, lengths) -> [k, v (B, Hkv, capacity, D)
    in the slots' dtypes, slots (B, Hkv) int64, ksum, vsum (B, Hkv, D), z, glen (B, Hkv), ring_k, ring_v
    (B, Hkv, window, D), ring_z (B, Hkv, window)], the small state fp32."""
    B, Hkv, _, D = shapes[5]
    f32 = torch.float32
    return [
        ((B, Hkv, capacity, D), dtypes[5]),
        ((B, Hkv, capacity, D), dtypes[6]),
        ((B, Hkv), torch.int64),
        ((B, Hkv, D), f32),
        ((B, Hkv, D), f32),
        ((B, Hkv), f32),
        ((B, Hkv), f32),
        ((B, Hkv, window, D), f32),
        ((B, Hkv, window, D), f32),
        ((B, Hkv, window), f32),
    ]
