"""zoo::add_rms_norm: a residual add and the RMSNorm of the sum as one node; the sum is an output too,
since it is the residual stream the next block adds to."""

import torch

from zoo.ops.add_rms_norm.cpu import add_rms_norm_cpu
from zoo.ops.add_rms_norm.reference import add_rms_norm_ref
from zoo.ops.add_rms_norm.shapes import output_specs
from zoo.ops.kernels import dispatch


def _triton():
    from zoo.ops.add_rms_norm.triton_kernel import add_rms_norm_triton

    return add_rms_norm_triton


def check_inputs(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    if x.shape != residual.shape:
        raise ValueError(f"add_rms_norm: residual {tuple(residual.shape)} differs from x {tuple(x.shape)}")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"add_rms_norm: weight {tuple(weight.shape)} is not (D,) for x {tuple(x.shape)}")


@torch.library.custom_op("zoo::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual (..., D), weight (D,) -> (normed, x + residual), both (..., D) and contiguous; the sum in
    the promoted dtype of x and residual, normed in the promoted dtype of the sum and weight."""
    check_inputs(x, residual, weight)
    impl = dispatch("add_rms_norm", x.device, reference=add_rms_norm_ref, cpu=add_rms_norm_cpu, triton=_triton)
    normed, total = impl(x, residual, weight, eps)
    return normed.contiguous(), total.contiguous()


@add_rms_norm.register_fake
def _(x, residual, weight, eps):
    check_inputs(x, residual, weight)
    tensors = (x, residual, weight)
    specs = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], eps=eps)
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in specs)
