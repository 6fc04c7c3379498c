"""zoo::gated_rms_norm: one node per Mamba-2 output norm (found by the idiom fusion pass)."""

import torch

from zoo.ops.gated_rms_norm.cpu import gated_rms_norm_cpu
from zoo.ops.gated_rms_norm.reference import gated_rms_norm_ref
from zoo.ops.gated_rms_norm.shapes import output_specs
from zoo.ops.kernels import dispatch


def _triton():
    from zoo.ops.gated_rms_norm.triton_kernel import gated_rms_norm_triton

    return gated_rms_norm_triton


def check_inputs(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int) -> None:
    if z.shape != x.shape:
        raise ValueError(f"gated_rms_norm: z {tuple(z.shape)} differs from x {tuple(x.shape)}")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"gated_rms_norm: weight {tuple(weight.shape)} is not (D,) for x {tuple(x.shape)}")
    if group_size < 1 or x.shape[-1] % group_size:
        raise ValueError(f"gated_rms_norm: group_size {group_size} does not divide D = {x.shape[-1]}")


@torch.library.custom_op("zoo::gated_rms_norm", mutates_args=())
def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """x, z (..., D), weight (D,) -> weight * rmsnorm_grouped(x * silu(z)) (..., D), contiguous, in the
    promoted dtype of x and weight."""
    check_inputs(x, z, weight, group_size)
    impl = dispatch("gated_rms_norm", x.device, reference=gated_rms_norm_ref, cpu=gated_rms_norm_cpu, triton=_triton)
    return impl(x, z, weight, group_size, eps).contiguous()


@gated_rms_norm.register_fake
def _(x, z, weight, group_size, eps):
    check_inputs(x, z, weight, group_size)
    tensors = (x, z, weight)
    specs = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], group_size=group_size, eps=eps)
    ((shape, dtype),) = specs
    return x.new_empty(shape, dtype=dtype)
