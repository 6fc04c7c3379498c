"""zoo::gated_rms_norm: the CPU implementation and the Triton kernel (interpreter) against the reference
and against zoo/nn/mamba2.py's GatedRMSNorm, per dtype, at awkward group sizes; opcheck."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.nn.mamba2 import GatedRMSNorm
from zoo.ops.gated_rms_norm import gated_rms_norm, gated_rms_norm_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = (((1, 1, 64), 16), ((3, 7, 48), 12), ((2, 90), 90))  # (shape, group_size): decode, odd groups, one group


def inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, z = (torch.randn(shape, generator=g) * 2).to(dtype), (torch.randn(shape, generator=g) * 2).to(dtype)
    return x, z, (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(dtype)


@pytest.mark.parametrize("choice", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, group_size", CASES, ids=str)
def test_matches_reference(choice, dtype, shape, group_size):
    x, z, weight = inputs(shape, dtype)
    with zoo.ops.kernel_choice(choice):
        out = gated_rms_norm(x, z, weight, group_size, 1e-5)
    expected = gated_rms_norm_ref(x, z, weight, group_size, 1e-5)
    assert out.dtype == expected.dtype and out.shape == x.shape and out.is_contiguous()
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_reference_is_the_model_layer(dtype):
    layer = GatedRMSNorm(48, group_size=12, eps=1e-5).to(dtype)
    with torch.no_grad():
        layer.weight.normal_(1, 0.2)
        x, z, _ = inputs((3, 5, 48), dtype)
        torch.testing.assert_close(gated_rms_norm_ref(x, z, layer.weight, 12, 1e-5), layer(x, z), atol=0, rtol=0)


def test_fp32_x_with_bf16_gate():
    x, z, weight = inputs((2, 3, 32), torch.float32)
    z = z.bfloat16()
    assert_close(gated_rms_norm(x, z, weight, 8, 1e-5), gated_rms_norm_ref(x, z, weight, 8, 1e-5))


def test_opcheck():
    torch.library.opcheck(torch.ops.zoo.gated_rms_norm.default, (*inputs((3, 5, 24), torch.float32), 8, 1e-5))


def test_bad_inputs_are_refused():
    x, z, weight = inputs((2, 24), torch.float32)
    with pytest.raises(ValueError, match="group_size"):
        gated_rms_norm(x, z, weight, 7, 1e-5)
    with pytest.raises(ValueError, match="z"):
        gated_rms_norm(x, z[:1], weight, 8, 1e-5)
