"""The chunked SSD scan as one Triton kernel (docs/algorithms.md §2.2).

One program per (batch, head, block of head_dim rows) walks the sequence in blocks of BLOCK_Q positions,
carrying its rows of the state in registers. State rows are independent (row i only reads x[:, i]), so
splitting head_dim costs only recomputing C.B^T per block. Per block, with a_cs the cumulative sum of
dt * A within the block:
    y     = ((C B^T) * exp(a_cs[l] - a_cs[s]) [s <= l]) (dt x) + exp(a_cs) * (C S^T)
    S    <- exp(a_cs[-1]) S + (dt x * exp(a_cs[-1] - a_cs))^T B
Positions past the end load dt = 0 and are inert, so no padding is needed. The blocking only changes
rounding, so BLOCK_Q is the chunk size capped for registers.
"""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def ssd_chunk_scan_kernel(
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    state_in_ptr,
    y_ptr,
    state_out_ptr,
    L,
    H,
    G,
    P,
    N,
    BLOCK_Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    group = head // (H // G)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    a = tl.load(A_ptr + head).to(tl.float32)
    state_offs = ((batch * H + head) * P + offs_p[:, None]) * N + offs_n[None, :]
    state_mask = mask_p[:, None] & mask_n[None, :]
    state = tl.load(state_in_ptr + state_offs, mask=state_mask, other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_N)
    causal = offs_q[:, None] >= offs_q[None, :]
    for start in range(0, L, BLOCK_Q):
        mask_t = start + offs_q < L
        row = batch * L + start + offs_q  # (BLOCK_Q,) flat (batch, position) index
        dt = tl.load(dt_ptr + row * H + head, mask=mask_t, other=0.0).to(tl.float32)
        x_offs = (row[:, None] * H + head) * P + offs_p[None, :]
        x_mask = mask_t[:, None] & mask_p[None, :]
        X = tl.load(x_ptr + x_offs, mask=x_mask, other=0.0).to(tl.float32) * dt[:, None]  # (BLOCK_Q, BLOCK_P)
        bc_offs = (row[:, None] * G + group) * N + offs_n[None, :]
        bc_mask = mask_t[:, None] & mask_n[None, :]
        Bm = tl.load(B_ptr + bc_offs, mask=bc_mask, other=0.0).to(tl.float32)  # (BLOCK_Q, BLOCK_N)
        Cm = tl.load(C_ptr + bc_offs, mask=bc_mask, other=0.0).to(tl.float32)
        a_cs = tl.cumsum(dt * a, axis=0)
        a_end = tl.sum(dt * a, axis=0)
        scores = tl.dot(Cm, tl.trans(Bm), input_precision="ieee")  # (BLOCK_Q, BLOCK_Q)
        # above the diagonal the exponent is positive and may overflow; tl.where drops those entries
        mixing = tl.where(causal, scores * tl.exp(a_cs[:, None] - a_cs[None, :]), 0.0)
        y = tl.dot(mixing, X, input_precision="ieee")
        y += tl.exp(a_cs)[:, None] * tl.dot(Cm, tl.trans(state), input_precision="ieee")
        tl.store(y_ptr + x_offs, y, mask=x_mask)
        to_end = X * tl.exp(a_end - a_cs)[:, None]
        state = state * tl.exp(a_end) + tl.dot(tl.trans(to_end), Bm, input_precision="ieee")
    tl.store(state_out_ptr + state_offs, state, mask=state_mask)


def block_sizes(chunk_size: int, head_dim: int, d_state: int) -> dict[str, int]:
    """tl.dot needs every dimension >= 16; positions per block are the chunk size capped at 64."""
    return {
        "BLOCK_Q": max(16, min(64, triton.next_power_of_2(chunk_size))),
        "BLOCK_P": max(16, min(32, triton.next_power_of_2(head_dim))),
        "BLOCK_N": max(16, triton.next_power_of_2(d_state)),
    }


def ssd_chunk_scan_triton(x, dt, A, B, C, initial_state, chunk_size):
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    y = torch.empty(b, L, h, p, dtype=torch.float32, device=x.device)
    final_state = torch.empty(b, h, p, n, dtype=torch.float32, device=x.device)
    blocks = block_sizes(chunk_size, p, n)
    grid = (b, h, triton.cdiv(p, blocks["BLOCK_P"]))
    ssd_chunk_scan_kernel[grid](
        x.contiguous(),
        dt.contiguous(),
        A.float().contiguous(),
        B.contiguous(),
        C.contiguous(),
        initial_state.float().contiguous(),
        y,
        final_state,
        L,
        h,
        g,
        p,
        n,
        **blocks,
        num_warps=4,
    )
    return y, final_state


TRITON_KERNELS = [
    KernelSpec(
        name="ssd_chunk_scan",
        fn=ssd_chunk_scan_kernel,
        signature={
            **dict.fromkeys(["x_ptr", "dt_ptr", "A_ptr", "B_ptr", "C_ptr", "state_in_ptr"], "*fp32"),
            **dict.fromkeys(["y_ptr", "state_out_ptr"], "*fp32"),
            **dict.fromkeys(["L", "H", "G", "P", "N"], "i32"),
            **dict.fromkeys(["BLOCK_Q", "BLOCK_P", "BLOCK_N"], "constexpr"),
        },
        constexprs=block_sizes(256, 64, 128),
        num_warps=4,
    ),
]
