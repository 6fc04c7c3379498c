"""zoo::ssd_chunk_scan: the CPU implementation and the Triton kernel (interpreter) against the minimal
chunked SSD reference, per dtype, on y and on the final state, at lengths around chunk boundaries."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.ops.ssd_chunk_scan import ssd_chunk_scan, ssd_chunk_scan_ref

CHUNK = 8


def random_inputs(batch, length, dtype=torch.float32, heads=4, head_dim=5, groups=2, d_state=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=g).to(dtype)
    dt = (torch.rand(batch, length, heads, generator=g) * 0.5 + 0.01).to(dtype)
    A = -(torch.rand(heads, generator=g) * 3 + 0.1)
    B = torch.randn(batch, length, groups, d_state, generator=g).to(dtype)
    C = torch.randn(batch, length, groups, d_state, generator=g).to(dtype)
    state = torch.randn(batch, heads, head_dim, d_state, generator=g)
    return x, dt, A, B, C, state


def run(choice, *inputs):
    with zoo.ops.kernel_choice(choice):
        return ssd_chunk_scan(*inputs, CHUNK)


LENGTHS = [1, 5, CHUNK, CHUNK + 1, 3 * CHUNK + 5]


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_reference(implementation, dtype, batch, length):
    inputs = random_inputs(batch, length, dtype)
    y, final = run(implementation, *inputs)
    y_ref, final_ref = ssd_chunk_scan_ref(*inputs, CHUNK)
    assert y.shape == (batch, length, 4, 5) and final.shape == (batch, 4, 5, 6)
    assert y.dtype == final.dtype == torch.float32
    assert_close(y, y_ref, dtype)
    assert_close(final, final_ref, dtype)


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
def test_long_chunks_match_reference(implementation):
    """A chunk longer than the CPU scan's internal chunk and the kernel's position blocks, not a multiple of them."""
    inputs = random_inputs(2, 130, d_state=16)
    with zoo.ops.kernel_choice(implementation):
        y, final = ssd_chunk_scan(*inputs, 100)
    y_ref, final_ref = ssd_chunk_scan_ref(*inputs, 100)
    assert_close(y, y_ref)
    assert_close(final, final_ref)


def test_zero_initial_state_and_zero_dt_are_inert():
    """A zero dt passes the state through unchanged: what padding (inside the op and in the model) relies on."""
    x, dt, A, B, C, state = random_inputs(2, 11)
    dt[:, 6:] = 0
    for choice in ("reference", "cpu", "triton"):
        _, final = run(choice, x, dt, A, B, C, state)
        _, at_six = run(choice, x[:, :6], dt[:, :6], A, B[:, :6], C[:, :6], state)
        assert_close(final, at_six)
        _, unchanged = run(choice, x, torch.zeros_like(dt), A, B, C, state)
        assert_close(unchanged, state)


def test_opcheck():
    torch.library.opcheck(torch.ops.zoo.ssd_chunk_scan.default, (*random_inputs(2, 13), CHUNK))


def test_bad_shapes_are_refused():
    x, dt, A, B, C, state = random_inputs(2, 5)
    with pytest.raises(ValueError, match="initial_state"):
        ssd_chunk_scan(x, dt, A, B, C, state[:, :2], CHUNK)
    with pytest.raises(ValueError, match="dt"):
        ssd_chunk_scan(x, dt[:, :3], A, B, C, state, CHUNK)
