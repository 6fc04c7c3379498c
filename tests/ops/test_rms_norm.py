"""zoo::rms_norm: the CPU implementation and the Triton kernel (interpreter) against the reference and
against zoo/nn/norms.py's RMSNorm, per dtype, at awkward sizes; opcheck; export."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.nn.norms import RMSNorm
from zoo.ops.rms_norm import rms_norm, rms_norm_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = ((1, 1, 64), (3, 7, 40), (2, 130))  # one decode token, odd prefill, a width past a power of two


def inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    weight = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(dtype)
    return x, weight


@pytest.mark.parametrize("choice", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(choice, dtype, shape):
    x, weight = inputs(shape, dtype)
    with zoo.ops.kernel_choice(choice):
        out = rms_norm(x, weight, 1e-5)
    expected = rms_norm_ref(x, weight, 1e-5)
    assert out.dtype == expected.dtype and out.shape == x.shape and out.is_contiguous()
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_reference_is_the_model_layer(dtype):
    layer = RMSNorm(40, eps=1e-6).to(dtype)
    with torch.no_grad():
        layer.weight.normal_(1, 0.2)
        x = inputs((3, 5, 40), dtype)[0]
        torch.testing.assert_close(rms_norm_ref(x, layer.weight, 1e-6), layer(x), atol=0, rtol=0)


def test_fp32_weight_on_bf16_input_promotes():
    x, weight = inputs((2, 3, 24), torch.bfloat16)
    out = rms_norm(x, weight.float(), 1e-5)
    assert out.dtype == torch.float32
    assert_close(out, rms_norm_ref(x, weight.float(), 1e-5), torch.bfloat16)


def test_non_contiguous_input():
    x, weight = inputs((4, 6, 32), torch.float32)
    x = x.transpose(0, 1)
    for choice in ("cpu", "triton"):
        with zoo.ops.kernel_choice(choice):
            assert_close(rms_norm(x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5))


def test_opcheck():
    torch.library.opcheck(torch.ops.zoo.rms_norm.default, (*inputs((3, 5, 24), torch.float32), 1e-5))
    torch.library.opcheck(torch.ops.zoo.rms_norm.default, (*inputs((2, 24), torch.bfloat16), 1e-6))


def test_export_keeps_a_symbolic_batch():
    class Norm(torch.nn.Module):
        def forward(self, x, weight):
            return rms_norm(x, weight, 1e-5)

    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(Norm(), inputs((3, 5, 24), torch.float32), dynamic_shapes=({0: batch}, None))
    assert [str(n.target) for n in ep.graph.nodes if n.op == "call_function"] == ["zoo.rms_norm.default"]
    x, weight = inputs((6, 5, 24), torch.float32, seed=1)
    assert_close(ep.module()(x, weight), rms_norm_ref(x, weight, 1e-5))


def test_bad_weight_is_refused():
    x, weight = inputs((2, 24), torch.float32)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, weight[:10], 1e-5)
