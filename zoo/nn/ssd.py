"""Mamba-2 state-space duality (SSD): the chunked scan for prefill and the recurrent step for decode.

Per head h with scalar decay A_h < 0 and state S in R^{P x N} (SPECS 2.1 step 5, 2.3):
    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T,        y_t = S_t C_t
(the D skip is added by the caller). Head h reads group g = h // (H / G) of B and C.
All arithmetic is in fp32. A time step with dt = 0 leaves the state unchanged (decay exp(0) = 1, no
input), which is how padded positions are made inert.
"""

import torch
import torch.nn.functional as F


def segsum(a: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum_{k=j+1..i} a[..., k] for i >= j, -inf above the diagonal (SPECS 2.2).

    Built with a masked cumulative sum rather than differences of cumsums, which lose precision."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # [..., i, j] = a_i
    strictly_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(a.masked_fill(~strictly_lower, 0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=0)
    return sums.masked_fill(~lower, float("-inf"))


def heads_from_groups(t: torch.Tensor, n_heads: int, dim: int) -> torch.Tensor:
    return t.repeat_interleave(n_heads // t.shape[dim], dim=dim)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD scan (SPECS 2.2), for any length.

    x: (b, L, h, p); dt: (b, L, h), already softplus'd; A: (h,); B, C: (b, L, g, n);
    initial_state: (b, h, p, n) or None (zeros). Returns y (b, L, h, p) in fp32 and the state after
    position L-1, (b, h, p, n) in fp32. L is padded internally with dt = 0 up to a multiple of chunk_size.

    Within a chunk the decay between positions s <= l is exp(A_cs[l] - A_cs[s]) from the chunk's
    cumulative sum A_cs, as mamba_ssm's chunk kernels compute it; across chunks the reference's stable
    segsum is used. Tensors are laid out (b, chunk, head, position, .) so every step is a batched matmul,
    and C.B^T is formed once per group, not per head.
    """
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    pad = -L % chunk_size
    x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x.float(), dt.float(), B.float(), C.float()))
    c, Q, hg = (L + pad) // chunk_size, chunk_size, h // g

    X = (x * dt[..., None]).reshape(b, c, Q, h, p).transpose(2, 3)  # discretised input dt * x: (b, c, h, Q, p)
    A_cs = (A.float() * dt).reshape(b, c, Q, h).transpose(2, 3).cumsum(-1)  # (b, c, h, Q)
    B = B.reshape(b, c, Q, g, n).transpose(2, 3)[:, :, :, None]  # (b, c, g, 1, Q, n)
    C = C.reshape(b, c, Q, g, n).transpose(2, 3)[:, :, :, None]
    by_group = (b, c, g, hg, Q)  # heads split as (group, head in group), to broadcast B and C

    # 1. within each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(A_cs[l] - A_cs[s]) X_s
    causal = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=x.device))
    decay_within = torch.exp(A_cs[..., :, None] - A_cs[..., None, :]).masked_fill(~causal, 0.0)
    scores = C @ B.transpose(-1, -2)  # (b, c, g, 1, Q, Q)
    y = (decay_within.view(*by_group, Q) * scores) @ X.view(*by_group, p)  # (b, c, g, hg, Q, p)
    # 2. the state each chunk adds, decayed to the chunk's end: sum_s exp(A_cs[-1] - A_cs[s]) X_s B_s^T
    decay_to_end = torch.exp(A_cs[..., -1:] - A_cs)  # (b, c, h, Q)
    chunk_states = (X * decay_to_end[..., None]).view(*by_group, p).transpose(-1, -2) @ B  # (b, c, g, hg, p, n)
    # 3. the state entering each chunk: a recurrence across chunks, started from the initial state
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, n, device=x.device)
    chunk_states = torch.cat([initial_state.float()[:, None], chunk_states.reshape(b, c, h, p, n)], dim=1)
    decay_across = torch.exp(segsum(F.pad(A_cs[..., -1].transpose(1, 2), (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_across, chunk_states)
    entering, final_state = states[:, :-1], states[:, -1]
    # 4. the entering state's contribution: exp(A_cs[l]) C_l . state_in
    y_off = (C @ entering.reshape(b, c, g, hg, p, n).transpose(-1, -2)) * torch.exp(A_cs).view(*by_group, 1)
    y = (y + y_off).reshape(b, c, h, Q, p).transpose(2, 3).reshape(b, c * Q, h, p)[:, :L]
    return y, final_state


def ssd_step(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step (SPECS 2.3). state: (b, h, p, n); x: (b, h, p); dt: (b, h); B, C: (b, g, n).

    Returns y (b, h, p) and the new state, both fp32."""
    h = x.shape[1]
    dt = dt.float()
    decay = torch.exp(dt * A.float())  # (b, h)
    B = heads_from_groups(B.float(), h, dim=1)
    C = heads_from_groups(C.float(), h, dim=1)
    state = state.float() * decay[..., None, None] + (dt[..., None] * x.float())[..., None] * B[:, :, None, :]
    return torch.einsum("bhpn,bhn->bhp", state, C), state
