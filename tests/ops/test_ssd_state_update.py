"""zoo::ssd_state_update: the CPU implementation and the Triton kernel (interpreter) against the reference,
per dtype, on y and on the new state; and the op stepped over a sequence against the chunked scan."""

import pytest
import torch
import torch.nn.functional as F

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.ops.ssd_chunk_scan import ssd_chunk_scan_ref
from zoo.ops.ssd_state_update import ssd_state_update, ssd_state_update_ref

NO_LIMIT = (0.0, float("inf"))


def random_inputs(batch, dtype=torch.float32, heads=4, head_dim=40, groups=2, d_state=6, seed=0):
    """head_dim 40 spans two blocks of the kernel's head_dim rows, the second one partly masked."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(batch, heads, head_dim, d_state, generator=g)
    x = torch.randn(batch, heads, head_dim, generator=g).to(dtype)
    dt = (torch.randn(batch, heads, generator=g) * 2).to(dtype)  # raw: softplus is applied inside
    A = -(torch.rand(heads, generator=g) * 3 + 0.1)
    B = torch.randn(batch, groups, d_state, generator=g).to(dtype)
    C = torch.randn(batch, groups, d_state, generator=g).to(dtype)
    D = torch.randn(heads, generator=g)
    dt_bias = torch.randn(heads, generator=g)
    return state, x, dt, A, B, C, D, dt_bias


def run(choice, *inputs):
    with zoo.ops.kernel_choice(choice):
        return ssd_state_update(*inputs)


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dt_limit", [NO_LIMIT, (0.05, 0.5)], ids=["no-limit", "clamped"])
def test_matches_reference(implementation, dtype, batch, dt_limit):
    inputs = (*random_inputs(batch, dtype), *dt_limit)
    y, new_state = run(implementation, *inputs)
    y_ref, new_state_ref = ssd_state_update_ref(*inputs)
    assert y.shape == (batch, 4, 40) and new_state.shape == (batch, 4, 40, 6)
    assert y.dtype == new_state.dtype == torch.float32
    assert_close(y, y_ref, dtype)
    assert_close(new_state, new_state_ref, dtype)


def test_large_dt_takes_softplus_linear_branch():
    state, x, dt, A, B, C, D, dt_bias = random_inputs(2)
    dt = torch.full_like(dt, 30.0)  # softplus(30 + bias) ~ 30 + bias: the threshold branch
    A = torch.full_like(A, -1e-3)
    y_ref, state_ref = ssd_state_update_ref(state, x, dt, A, B, C, D, dt_bias, *NO_LIMIT)
    for choice in ("cpu", "triton"):
        y, new_state = run(choice, state, x, dt, A, B, C, D, dt_bias, *NO_LIMIT)
        assert_close(y, y_ref)
        assert_close(new_state, state_ref)


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
def test_steps_match_the_chunked_scan(implementation):
    """Feeding a sequence one step at a time gives the prefill scan's outputs and final state."""
    state, *_ = random_inputs(2, head_dim=3)
    g = torch.Generator().manual_seed(1)
    length, heads = 7, 4
    x = torch.randn(2, length, heads, 3, generator=g)
    dt_raw = torch.randn(2, length, heads, generator=g)
    A, D, dt_bias = -torch.rand(heads, generator=g) - 0.1, torch.randn(heads, generator=g), torch.randn(heads)
    B, C = torch.randn(2, length, 2, 6, generator=g), torch.randn(2, length, 2, 6, generator=g)
    y_scan, final_scan = ssd_chunk_scan_ref(x, F.softplus(dt_raw + dt_bias), A, B, C, state, 4)
    outputs = []
    for t in range(length):
        y, state = run(implementation, state, x[:, t], dt_raw[:, t], A, B[:, t], C[:, t], D, dt_bias, *NO_LIMIT)
        outputs.append(y - D[:, None] * x[:, t])
    assert_close(torch.stack(outputs, 1), y_scan)
    assert_close(state, final_scan)


def test_opcheck():
    torch.library.opcheck(torch.ops.zoo.ssd_state_update.default, (*random_inputs(2), *NO_LIMIT))


def test_bad_shapes_are_refused():
    state, x, dt, A, B, C, D, dt_bias = random_inputs(2)
    with pytest.raises(ValueError, match="one value per head"):
        ssd_state_update(state, x, dt, A, B, C, D[:2], dt_bias, *NO_LIMIT)
