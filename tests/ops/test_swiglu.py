"""zoo::swiglu: the CPU implementation and the Triton kernel (interpreter) against the reference and
against GatedMLP's activation, per dtype, at awkward sizes; opcheck."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.nn.mlp import GatedMLP
from zoo.ops.swiglu import swiglu, swiglu_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = ((1, 1, 160), (3, 7, 45), (1031,))  # decode, odd prefill, more than one block of the kernel


def inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(dtype), torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("choice", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(choice, dtype, shape):
    gate, up = inputs(shape, dtype)
    with zoo.ops.kernel_choice(choice):
        out = swiglu(gate, up)
    assert out.dtype == dtype and out.shape == gate.shape
    assert_close(out, swiglu_ref(gate, up), dtype)


def test_reference_is_the_gated_mlp():
    mlp = GatedMLP(16, 24)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(mlp.w_down(swiglu_ref(mlp.w_gate(x), mlp.w_up(x))), mlp(x), atol=0, rtol=0)


def test_output_does_not_alias_inputs():
    gate, up = inputs((4, 8), torch.float32)
    before = gate.clone(), up.clone()
    out = swiglu(gate, up)
    assert out.data_ptr() not in (gate.data_ptr(), up.data_ptr())
    torch.testing.assert_close((gate, up), before, atol=0, rtol=0)


def test_opcheck():
    torch.library.opcheck(torch.ops.zoo.swiglu.default, inputs((3, 5, 24), torch.float32))
    torch.library.opcheck(torch.ops.zoo.swiglu.default, inputs((2, 7), torch.bfloat16))


def test_bad_shapes_are_refused():
    gate, up = inputs((2, 24), torch.float32)
    with pytest.raises(ValueError, match="up"):
        swiglu(gate, up[:, :5])
