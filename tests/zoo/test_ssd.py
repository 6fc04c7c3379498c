"""The chunked SSD scan and the recurrent step against a plain per-step loop written here."""

import pytest
import torch

from zoo.nn.ssd import ssd_chunked, ssd_step

CHUNK = 8


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


@pytest.mark.parametrize(
    "length", [1, 5, CHUNK, 3 * CHUNK + 5], ids=["one", "inside-chunk", "one-chunk", "chunks+rest"]
)
def test_chunked_scan_matches_recurrence_from_a_nonzero_state(length):
    x, dt, A, B, C, state = random_inputs(length)
    y, final = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state)
    y_ref, final_ref = sequential_ssd(x, dt, A, B, C, state)
    assert y.shape == (2, length, 4, 3) and final.shape == (2, 4, 3, 5)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-4, rtol=1e-4)


def test_chunked_scan_from_zero_state_is_the_default():
    x, dt, A, B, C, _ = random_inputs(13)
    y, final = ssd_chunked(x, dt, A, B, C, CHUNK)
    y_ref, final_ref = sequential_ssd(x, dt, A, B, C, torch.zeros(2, 4, 3, 5))
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, atol=1e-4, rtol=1e-4)


def test_zero_dt_leaves_the_state_unchanged():
    """What prefill relies on to make right-padding inert."""
    x, dt, A, B, C, state = random_inputs(11)
    dt[:, 6:] = 0
    _, final = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state)
    _, at_six = ssd_chunked(x[:, :6], dt[:, :6], A, B[:, :6], C[:, :6], CHUNK, initial_state=state)
    torch.testing.assert_close(final, at_six)


def test_decode_step_matches_recurrence():
    x, dt, A, B, C, state = random_inputs(6)
    S = state
    outputs = []
    for t in range(6):
        y, S = ssd_step(S, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        outputs.append(y)
    y_ref, final_ref = sequential_ssd(x, dt, A, B, C, state)
    torch.testing.assert_close(torch.stack(outputs, 1).double(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S.double(), final_ref, atol=1e-5, rtol=1e-5)
