"""The minimal chunked SSD (docs/algorithms.md §2.2): a port of mamba_ssm's `ssd_minimal_discrete` with the
stable segsum, plus the padding to whole chunks and an initial state.

Per head h with scalar decay A_h < 0 and state S in R^{P x N}:
    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T,        y_t = S_t C_t
(the D skip is added by the caller). Head h reads group g = h // (H / G) of B and C. All arithmetic is
in fp32. A position with dt = 0 leaves the state unchanged, which is how the padding (and a model's
right-padded rows) are made inert.
"""

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum_{k=j+1..i} a[..., k] for i >= j, -inf above the diagonal.

    Built with a masked cumulative sum rather than differences of cumsums, which lose precision."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # [..., i, j] = a_i
    strictly_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(a.masked_fill(~strictly_lower, 0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=0)
    return sums.masked_fill(~lower, float("-inf"))


def heads_from_groups(t: torch.Tensor, n_heads: int, dim: int) -> torch.Tensor:
    """Repeat each group of B or C for the n_heads / n_groups heads that read it."""
    return t.repeat_interleave(n_heads // t.shape[dim], dim=dim)


def ssd_chunk_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (b, L, h, p); dt: (b, L, h), already softplus'd; A: (h,); B, C: (b, L, g, n);
    initial_state: (b, h, p, n). Returns y (b, L, h, p) and the state after position L-1 (b, h, p, n),
    both fp32. L is padded with dt = 0 to a multiple of chunk_size (plus one chunk, see below).

    ssd_minimal_discrete's einsums are written as matmuls over a (b, h, chunk, position, .) layout: traced
    as the op's decomposition, einsum's handling of size-1 dimensions would guard on the batch size.
    """
    b, L, h, p = x.shape
    # one whole chunk of padding more than needed: the number of chunks is then >= 2 for every L, so a
    # graph traced from this function (the op's decomposition) holds for any number of chunks instead of
    # guarding on the example's (a size-1 dimension gets its own strides and broadcasting rules)
    chunks = (L + chunk_size - 1) // chunk_size + 1
    pad = chunks * chunk_size - L
    x, dt, B, C = (F.pad(t.float(), (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    B, C = heads_from_groups(B, h, dim=2), heads_from_groups(C, h, dim=2)
    # (b, L, h, ...) -> (b, h, c, Q, ...)
    by_chunk = lambda t: t.reshape(b, chunks, chunk_size, h, -1).permute(0, 3, 1, 2, 4)  # noqa: E731
    X, B, C = by_chunk(x * dt[..., None]), by_chunk(B), by_chunk(C)
    A_dt = by_chunk(A.float() * dt)[..., 0]  # (b, h, c, Q)
    A_cs = torch.cumsum(A_dt, dim=-1)

    # 1. within each chunk (diagonal blocks): Y_diag[l] = sum_{s <= l} (C_l . B_s) exp(segsum)[l, s] X_s
    y_diag = (C @ B.transpose(-1, -2) * torch.exp(segsum(A_dt))) @ X  # (b, h, c, Q, p)
    # 2. the state each chunk adds, decayed to the chunk's end
    decay_states = torch.exp(A_cs[..., -1:] - A_cs)
    states = (X * decay_states[..., None]).transpose(-1, -2) @ B  # (b, h, c, p, n)
    # 3. the recurrence across chunks, from the initial state
    states = torch.cat([initial_state.float()[:, :, None], states], dim=2)  # (b, h, c + 1, p, n)
    decay_chunk = torch.exp(segsum(F.pad(A_cs[..., -1], (1, 0))))  # (b, h, c + 1, c + 1)
    new_states = (decay_chunk @ states.flatten(-2)).unflatten(-1, (p, -1))
    states, final_state = new_states[:, :, :-1], new_states[:, :, -1]
    # 4. the entering state's contribution to each position
    y_off = (C @ states.transpose(-1, -2)) * torch.exp(A_cs)[..., None]  # (b, h, c, Q, p)
    y = (y_diag + y_off).permute(0, 2, 3, 1, 4).reshape(b, chunks * chunk_size, h, p)[:, :L].contiguous()
    return y, final_state
