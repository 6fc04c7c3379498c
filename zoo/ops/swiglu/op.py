"""zoo::swiglu: the elementwise silu(gate) * up that the idiom fusion pass finds after a gated MLP's two
input projections. The projections stay matmuls in the graph, where the matvec and quantisation passes
can still see them; the op takes only their outputs."""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.swiglu.cpu import swiglu_cpu
from zoo.ops.swiglu.reference import swiglu_ref
from zoo.ops.swiglu.shapes import output_specs


def _triton():
    from zoo.ops.swiglu.triton_kernel import swiglu_triton

    return swiglu_triton


def check_inputs(gate: torch.Tensor, up: torch.Tensor) -> None:
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: up {tuple(up.shape)} differs from gate {tuple(gate.shape)}")


@torch.library.custom_op("zoo::swiglu", mutates_args=())
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up (..., F) -> silu(gate) * up (..., F), contiguous, in the promoted dtype of gate and up."""
    check_inputs(gate, up)
    impl = dispatch("swiglu", gate.device, reference=swiglu_ref, cpu=swiglu_cpu, triton=_triton)
    return impl(gate, up).contiguous()


@swiglu.register_fake
def _(gate, up):
    check_inputs(gate, up)
    ((shape, dtype),) = output_specs([gate.shape, up.shape], [gate.dtype, up.dtype])
    return gate.new_empty(shape, dtype=dtype)
