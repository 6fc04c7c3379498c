"""zoo::dmc_decode_attention: the decode region of one DMC attention layer as one op (see reference.py)."""

import torch

from zoo.ops.dmc_decode_attention.cpu import dmc_decode_attention_cpu
from zoo.ops.dmc_decode_attention.reference import dmc_decode_attention_ref
from zoo.ops.dmc_decode_attention.shapes import output_specs
from zoo.ops.kernels import dispatch

OP_NAME = "dmc_decode_attention"
STATE_OUTPUTS = ("slots", "ksum", "vsum", "z", "glen", "ring_k", "ring_v", "ring_z")


def _triton_launcher():
    from zoo.ops.dmc_decode_attention.triton_kernel import dmc_decode_attention_triton

    return dmc_decode_attention_triton


@torch.library.custom_op(f"zoo::{OP_NAME}", mutates_args=())
def dmc_decode_attention(
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
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    """Returns (out (B, H, D), new_k, new_v (B, Hkv, D), then the updated slots, ksum, vsum, z, glen, ring_k,
    ring_v, ring_z). merge_period > 0 forces the decisions (every merge_period-th token appends)."""
    if q.dim() != 3 or k_cache.dim() != 4 or q.shape[1] % k_cache.shape[1]:
        raise ValueError(f"dmc_decode_attention: q {tuple(q.shape)} and cache {tuple(k_cache.shape)} do not fit")
    impl = dispatch(
        OP_NAME, q.device, reference=dmc_decode_attention_ref, cpu=dmc_decode_attention_cpu, triton=_triton_launcher
    )
    args = (q, k, v, cos, sin, positions, k_cache, v_cache, slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z)
    return impl(*args, init_val, window, scale, merge_period)


@dmc_decode_attention.register_fake
def _(
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
    tensors = (q, k, v, cos, sin, positions, k_cache, v_cache, slots, ksum, vsum, z, glen, ring_k, ring_v, ring_z)
    attrs = dict(init_val=init_val, window=window, scale=scale, merge_period=merge_period)
    specs = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], **attrs)
    return tuple(q.new_empty(shape, dtype=dtype) for shape, dtype in specs)
