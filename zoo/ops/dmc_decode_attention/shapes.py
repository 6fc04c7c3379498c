"""Output shapes and dtypes of zoo::dmc_decode_attention from its input shapes and dtypes (plain
arithmetic on sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and
the TensorRT plugin both use it."""


def output_specs(shapes, dtypes, init_val, window, scale, merge_period):
    """(q, k (B, Hkv, D), v, cos, sin, positions, k_cache, v_cache, then the state slots, ksum, vsum, z,
    glen, ring_k, ring_v, ring_z) -> [out like q, new_k, new_v (B, Hkv, D) in the cache's dtype, then the
    new state like the state inputs]."""
    cache_dtype = dtypes[6]
    outputs = [(tuple(shapes[0]), dtypes[0]), (tuple(shapes[1]), cache_dtype), (tuple(shapes[1]), cache_dtype)]
    return outputs + [(tuple(shape), dtype) for shape, dtype in zip(shapes[8:], dtypes[8:])]
