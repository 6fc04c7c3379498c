"""The SSD ops (zoo::ssd_chunk_scan for prefill, zoo::ssd_state_update for decode) against a plain
per-step loop written here, in float64: an oracle independent of the chunked algorithm."""

import pytest
import torch
import torch.nn.functional as F

import zoo.ops
from zoo.ops.ssd_chunk_scan import ssd_chunk_scan
from zoo.ops.ssd_state_update import ssd_state_update

CHUNK = 8
IMPLEMENTATIONS = ["reference", "cpu", "triton"]


def sequential_ssd(x, dt, A, B, C, state):
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T; y_t = S_t C_t, head h reading group h // (H/G)."""
    b, L, h, p = x.shape
    heads_per_group = h // B.shape[2]
    ys = torch.zeros(b, L, h, p, dtype=torch.float64)
    S = state.double().clone()
    for t in range(L):
        for head in range(h):
            g = head // heads_per_group
            decay = torch.exp(dt[:, t, head].double() * A[head].double())  # (b,)
            inject = (dt[:, t, head, None].double() * x[:, t, head].double())[:, :, None] * B[:, t, g].double()[
                :, None, :
            ]
            S[:, head] = decay[:, None, None] * S[:, head] + inject
            ys[:, t, head] = torch.einsum("bpn,bn->bp", S[:, head], C[:, t, g].double())
    return ys, S


def random_inputs(L, b=2, h=4, p=3, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen)
    dt = torch.rand(b, L, h, generator=gen) * 0.5 + 0.01
    A = -(torch.rand(h, generator=gen) * 3 + 0.1)
    B = torch.randn(b, L, g, n, generator=gen)
    C = torch.randn(b, L, g, n, generator=gen)
    state = torch.randn(b, h, p, n, generator=gen)
    return x, dt, A, B, C, state


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "length", [1, 5, CHUNK, 3 * CHUNK + 5], ids=["one", "inside-chunk", "one-chunk", "chunks+rest"]
)
def test_chunked_scan_matches_recurrence_from_a_nonzero_state(implementation, length):
    x, dt, A, B, C, state = random_inputs(length)
    with zoo.ops.kernel_choice(implementation):
        y, final = ssd_chunk_scan(x, dt, A, B, C, state, CHUNK)
    y_ref, final_ref = sequential_ssd(x, dt, A, B, C, state)
    assert y.shape == (2, length, 4, 3) and final.shape == (2, 4, 3, 5)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_chunked_scan_from_the_zero_state(implementation):
    x, dt, A, B, C, _ = random_inputs(13)
    zeros = torch.zeros(2, 4, 3, 5)
    with zoo.ops.kernel_choice(implementation):
        y, final = ssd_chunk_scan(x, dt, A, B, C, zeros, CHUNK)
    y_ref, final_ref = sequential_ssd(x, dt, A, B, C, zeros)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_decode_steps_match_recurrence(implementation):
    """ssd_state_update from the raw dt: softplus(dt_raw + dt_bias) is the dt the recurrence sees."""
    x, dt, A, B, C, state = random_inputs(6)
    dt_bias = torch.linspace(-1, 1, 4)
    dt_raw = torch.log(torch.expm1(dt)) - dt_bias  # softplus^-1(dt) - dt_bias
    D = torch.zeros(4)
    S, outputs = state, []
    with zoo.ops.kernel_choice(implementation):
        for t in range(6):
            y, S = ssd_state_update(S, x[:, t], dt_raw[:, t], A, B[:, t], C[:, t], D, dt_bias, 0.0, float("inf"))
            outputs.append(y)
    y_ref, final_ref = sequential_ssd(x, F.softplus(dt_raw + dt_bias), A, B, C, state)
    torch.testing.assert_close(torch.stack(outputs, 1).double(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S.double(), final_ref, atol=1e-5, rtol=1e-5)
