"""zoo::rope: the CPU implementation and the Triton kernel (interpreter) against the reference and against
zoo/nn/rope.py's apply_rope, per dtype, on q/k laid out as the attention makes them; opcheck."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.nn.rope import RotaryEmbedding, apply_rope
from zoo.ops.rope import rope, rope_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = ((1, 4, 1, 16), (3, 2, 7, 18), (1, 3, 5, 128))  # (B, H, L, D): decode, odd D/2, a wide head


def inputs(batch, heads, length, head_dim, dtype, seed=0):
    """q as SelfAttention.project makes it: a (B, H, L, D) view of a (B, L, H, D) projection, and the
    (B, 1, L, D) angles of RotaryEmbedding at per-row positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=g).to(dtype).transpose(1, 2)
    positions = torch.randint(0, 200, (batch, length), generator=g)
    cos, sin = RotaryEmbedding(head_dim, 10000.0)(positions, dtype)
    return x, cos, sin


@pytest.mark.parametrize("choice", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(choice, dtype, case):
    x, cos, sin = inputs(*case, dtype)
    with zoo.ops.kernel_choice(choice):
        out = rope(x, cos, sin)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    assert_close(out, rope_ref(x, cos, sin), dtype)


def test_reference_is_apply_rope():
    x, cos, sin = inputs(2, 3, 5, 16, torch.float32)
    torch.testing.assert_close(rope_ref(x, cos, sin), apply_rope(x, cos, sin), atol=0, rtol=0)


def test_angles_of_full_shape_and_three_dims():
    g = torch.Generator().manual_seed(3)
    x, cos, sin = (torch.randn(5, 7, 12, generator=g) for _ in range(3))
    for choice in ("cpu", "triton"):
        with zoo.ops.kernel_choice(choice):
            assert_close(rope(x, cos, sin), rope_ref(x, cos, sin))


def test_opcheck():
    torch.library.opcheck(torch.ops.zoo.rope.default, inputs(2, 3, 5, 16, torch.float32))


def test_bad_inputs_are_refused():
    x, cos, sin = inputs(2, 3, 5, 16, torch.float32)
    with pytest.raises(ValueError, match="cos"):
        rope(x, cos[..., :8], sin)
    with pytest.raises(ValueError, match="even"):
        rope(x[..., :15], cos[..., :15], sin[..., :15])
