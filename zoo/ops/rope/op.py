"""zoo::rope: one node per rotary embedding of q or k (found by the idiom fusion pass)."""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.rope.cpu import rope_cpu
from zoo.ops.rope.reference import rope_ref
from zoo.ops.rope.shapes import output_specs


def _triton():
    from zoo.ops.rope.triton_kernel import rope_triton

    return rope_triton


def check_inputs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"rope: the last dim of x {tuple(x.shape)} must be even")
    for name, angle in (("cos", cos), ("sin", sin)):
        try:
            fits = angle.dim() <= x.dim() and torch.broadcast_shapes(x.shape, angle.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"rope: {name} {tuple(angle.shape)} does not broadcast to x {tuple(x.shape)}")


@torch.library.custom_op("zoo::rope", mutates_args=())
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., D); cos, sin broadcastable to x -> x * cos + rotate_half(x) * sin, x's shape, contiguous, in
    the promoted dtype of x, cos and sin."""
    check_inputs(x, cos, sin)
    impl = dispatch("rope", x.device, reference=rope_ref, cpu=rope_cpu, triton=_triton)
    return impl(x, cos, sin).contiguous()


@rope.register_fake
def _(x, cos, sin):
    check_inputs(x, cos, sin)
    ((shape, dtype),) = output_specs([x.shape, cos.shape, sin.shape], [x.dtype, cos.dtype, sin.dtype])
    return x.new_empty(shape, dtype=dtype)
