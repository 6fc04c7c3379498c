"""zoo::dmc_prefill_cache: the one-shot DMC prefill cache build as one op (see reference.py)."""

import torch

from zoo.ops.dmc_prefill_cache.cpu import dmc_prefill_cache_cpu
from zoo.ops.dmc_prefill_cache.reference import dmc_prefill_cache_ref
from zoo.ops.dmc_prefill_cache.shapes import output_specs
from zoo.ops.kernels import dispatch

OP_NAME = "dmc_prefill_cache"
OUTPUTS = ("k", "v", "slots", "ksum", "vsum", "z", "glen", "ring_k", "ring_v", "ring_z")


def _triton_launcher():
    from zoo.ops.dmc_prefill_cache.triton_kernel import dmc_prefill_cache_triton

    return dmc_prefill_cache_triton


@torch.library.custom_op(f"zoo::{OP_NAME}", mutates_args=())
def dmc_prefill_cache(
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
]:
    """Returns the decode state after the prompt: (k, v (B, Hkv, capacity, D), slots, ksum, vsum, z, glen,
    ring_k, ring_v, ring_z), in the layout of zoo.nn.dmc."""
    if alpha.dim() != 3 or k_slot.dim() != 4 or kv.shape[-1] != 2 * k_slot.shape[-1]:
        raise ValueError(f"dmc_prefill_cache: alpha {tuple(alpha.shape)}, kv {tuple(kv.shape)} and k_slot "
                         f"{tuple(k_slot.shape)} do not fit")  # fmt: skip
    impl = dispatch(
        OP_NAME, alpha.device, reference=dmc_prefill_cache_ref, cpu=dmc_prefill_cache_cpu, triton=_triton_launcher
    )
    return impl(alpha, omega, kv, acc, weight, k_slot, v_slot, lengths, capacity, window)


@dmc_prefill_cache.register_fake
def _(alpha, omega, kv, acc, weight, k_slot, v_slot, lengths, capacity, window):
    tensors = (alpha, omega, kv, acc, weight, k_slot, v_slot, lengths)
    specs = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], capacity=capacity, window=window)
    return tuple(alpha.new_empty(shape, dtype=dtype) for shape, dtype in specs)
