"""zoo::rms_norm: one node per RMSNorm (the idiom fusion pass finds the ATen pattern of zoo/nn/norms.py)."""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.rms_norm.cpu import rms_norm_cpu
from zoo.ops.rms_norm.reference import rms_norm_ref
from zoo.ops.rms_norm.shapes import output_specs


def _triton():
    from zoo.ops.rms_norm.triton_kernel import rms_norm_triton

    return rms_norm_triton


def check_inputs(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} is not (D,) for x {tuple(x.shape)}")


@torch.library.custom_op("zoo::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., D), weight (D,) -> weight * rmsnorm(x) (..., D), contiguous, dtype promoted from x and weight."""
    check_inputs(x, weight)
    impl = dispatch("rms_norm", x.device, reference=rms_norm_ref, cpu=rms_norm_cpu, triton=_triton)
    return impl(x, weight, eps).contiguous()


@rms_norm.register_fake
def _(x, weight, eps):
    check_inputs(x, weight)
    ((shape, dtype),) = output_specs([x.shape, weight.shape], [x.dtype, weight.dtype], eps=eps)
    return x.new_empty(shape, dtype=dtype)
