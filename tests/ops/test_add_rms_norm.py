"""zoo::add_rms_norm: both outputs (the norm and the residual sum) of the CPU implementation and the
Triton kernel (interpreter) against the reference, per dtype, at awkward sizes; opcheck."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.ops.add_rms_norm import add_rms_norm, add_rms_norm_ref
from zoo.ops.rms_norm import rms_norm_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = ((1, 1, 64), (3, 7, 40), (2, 130))


def inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, residual = (torch.randn(shape, generator=g) * 2).to(dtype), torch.randn(shape, generator=g).to(dtype)
    return x, residual, (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(dtype)


@pytest.mark.parametrize("choice", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(choice, dtype, shape):
    x, residual, weight = inputs(shape, dtype)
    with zoo.ops.kernel_choice(choice):
        normed, total = add_rms_norm(x, residual, weight, 1e-5)
    expected_normed, expected_total = add_rms_norm_ref(x, residual, weight, 1e-5)
    assert normed.dtype == total.dtype == dtype and normed.is_contiguous() and total.is_contiguous()
    assert_close(total, expected_total, dtype)
    assert_close(normed, expected_normed, dtype)


def test_reference_is_add_then_norm():
    x, residual, weight = inputs((3, 5, 24), torch.bfloat16)
    normed, total = add_rms_norm_ref(x, residual, weight, 1e-6)
    torch.testing.assert_close(total, x + residual, atol=0, rtol=0)
    torch.testing.assert_close(normed, rms_norm_ref(x + residual, weight, 1e-6), atol=0, rtol=0)


def test_opcheck():
    torch.library.opcheck(torch.ops.zoo.add_rms_norm.default, (*inputs((3, 5, 24), torch.float32), 1e-5))


def test_bad_shapes_are_refused():
    x, residual, weight = inputs((2, 3, 24), torch.float32)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, residual[:, :1], weight, 1e-5)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm(x, residual, weight[:3], 1e-5)
