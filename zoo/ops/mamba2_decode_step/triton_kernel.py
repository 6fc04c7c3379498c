"""One Mamba-2 decode step as one Triton kernel: a program per (batch row, B/C group).

The program first runs the conv step + SiLU for its group's B and C channels (one (2, BLOCK_N, BLOCK_K)
tile of the window: B's and C's rows), then loops over the group's heads and over BLOCK_P tiles of
head_dim: the conv step for those x channels, the state tile (BLOCK_P, BLOCK_N) decayed and given its
rank-1 input, y = S C + D x, and the gate y * silu(z) written (fp32) to a workspace row while the group's
sum of squares accumulates. A second loop normalises the group and applies norm_weight. The workspace
(b, h*p) fp32 is the kernel's last pointer, after the outputs: the launcher passes `out` itself when it is
fp32, and TensorRT's AOT plugin declares it as an extra output (tensorrt_plugin.py). Arithmetic is fp32,
with the roundings of the three-op chain (conv output to xbc's dtype, y and the normalised gate to z's
dtype). Channel c of xbc is: x of head c // p for c < h*p; B of group g, entry j at h*p + g*n + j;
C at h*p + G*n + g*n + j (zoo/nn/mamba2.py split_xbc).
"""

import torch
import triton
import triton.language as tl

from zoo.ops.mamba2_decode_step.reference import bc_groups
from zoo.ops.triton_aot import KernelSpec


@triton.jit
def mamba2_decode_step_kernel(
    window_ptr,
    state_ptr,
    xbc_ptr,
    z_ptr,
    dt_ptr,
    conv_weight_ptr,
    conv_bias_ptr,
    A_ptr,
    D_ptr,
    dt_bias_ptr,
    norm_weight_ptr,
    out_ptr,
    new_window_ptr,
    new_state_ptr,
    workspace_ptr,
    dt_min,
    dt_max,
    eps,
    H,
    G,
    P,
    N,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    heads_per_group = H // G
    d_inner = H * P
    conv_dim = d_inner + 2 * G * N
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    from_older = offs_k < K - 1  # new window columns 0..K-2 are the old columns 1..K-1
    is_newest = offs_k == K - 1  # the last column is the new xbc input
    offs_n = tl.arange(0, BLOCK_N)

    # conv step for B_g (row 0) and C_g (row 1)
    which = tl.arange(0, 2)
    bc_chan = d_inner + which[:, None] * (G * N) + group * N + offs_n[None, :]  # (2, BLOCK_N)
    bc_mask = (which[:, None] < 2) & (offs_n < N)[None, :]
    bc_row = (batch * conv_dim + bc_chan)[:, :, None] * K
    bc_tile_mask = bc_mask[:, :, None] & mask_k[None, None, :]
    bc_older = tl.load(
        window_ptr + bc_row + offs_k + 1, mask=bc_mask[:, :, None] & from_older[None, None, :], other=0.0
    )
    bc_newest = tl.load(xbc_ptr + batch * conv_dim + bc_chan, mask=bc_mask, other=0.0)
    bc_newest = bc_newest.to(new_window_ptr.dtype.element_ty).to(tl.float32)
    bc_window = tl.where(is_newest[None, None, :], bc_newest[:, :, None], bc_older.to(tl.float32))
    tl.store(new_window_ptr + bc_row + offs_k, bc_window.to(new_window_ptr.dtype.element_ty), mask=bc_tile_mask)
    bc_weight = tl.load(conv_weight_ptr + bc_chan[:, :, None] * K + offs_k, mask=bc_tile_mask, other=0.0)
    bc = tl.sum(bc_window * bc_weight.to(tl.float32), axis=2)
    if HAS_BIAS:
        bc += tl.load(conv_bias_ptr + bc_chan, mask=bc_mask, other=0.0).to(tl.float32)
    bc = (bc / (1.0 + tl.exp(-bc))).to(xbc_ptr.dtype.element_ty).to(tl.float32)  # SiLU, rounded as the chain
    B = tl.sum(tl.where(which[:, None] == 0, bc, 0.0), axis=0)
    C = tl.sum(tl.where(which[:, None] == 1, bc, 0.0), axis=0)

    sum_squares = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for head_in_group in range(heads_per_group):
        head = group * heads_per_group + head_in_group
        dt = tl.load(dt_ptr + batch * H + head).to(tl.float32) + tl.load(dt_bias_ptr + head).to(tl.float32)
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus, with torch's threshold of 20
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
        decay = tl.exp(dt * tl.load(A_ptr + head).to(tl.float32))
        skip = tl.load(D_ptr + head).to(tl.float32)
        for p_start in range(0, P, BLOCK_P):
            offs_p = p_start + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            chan = head * P + offs_p  # the x channel in xbc, and the column of z and out
            # conv step for this tile's x channels
            row = (batch * conv_dim + chan)[:, None] * K
            tile_mask = mask_p[:, None] & mask_k[None, :]
            older = tl.load(
                window_ptr + row + offs_k[None, :] + 1, mask=mask_p[:, None] & from_older[None, :], other=0.0
            )
            newest = tl.load(xbc_ptr + batch * conv_dim + chan, mask=mask_p, other=0.0)
            newest = newest.to(new_window_ptr.dtype.element_ty).to(tl.float32)
            window = tl.where(is_newest[None, :], newest[:, None], older.to(tl.float32))
            tl.store(new_window_ptr + row + offs_k[None, :], window.to(new_window_ptr.dtype.element_ty), mask=tile_mask)
            weight = tl.load(conv_weight_ptr + chan[:, None] * K + offs_k[None, :], mask=tile_mask, other=0.0)
            x = tl.sum(window * weight.to(tl.float32), axis=1)
            if HAS_BIAS:
                x += tl.load(conv_bias_ptr + chan, mask=mask_p, other=0.0).to(tl.float32)
            x = (x / (1.0 + tl.exp(-x))).to(xbc_ptr.dtype.element_ty).to(tl.float32)
            # state update and readout
            state_offs = ((batch * H + head) * P + offs_p[:, None]) * N + offs_n[None, :]
            state_mask = mask_p[:, None] & (offs_n < N)[None, :]
            state = tl.load(state_ptr + state_offs, mask=state_mask, other=0.0).to(tl.float32)
            state = state * decay + (dt * x)[:, None] * B[None, :]
            tl.store(new_state_ptr + state_offs, state, mask=state_mask)
            y = tl.sum(state * C[None, :], axis=1) + skip * x
            # the gate; masked lanes are 0 (x, state and z are)
            y = y.to(z_ptr.dtype.element_ty).to(tl.float32)
            z = tl.load(z_ptr + batch * d_inner + chan, mask=mask_p, other=0.0).to(tl.float32)
            gated = y * z * tl.sigmoid(z)
            sum_squares += gated * gated
            tl.store(workspace_ptr + batch * d_inner + chan, gated, mask=mask_p)

    tl.debug_barrier()  # the gate's stores are visible to every thread of the program before they are read
    group_size = heads_per_group * P
    rstd = tl.rsqrt(tl.sum(sum_squares, axis=0) / group_size + eps)
    for start in range(0, group_size, BLOCK_P):
        offs = start + tl.arange(0, BLOCK_P)
        mask = offs < group_size
        cols = group * group_size + offs
        gate = tl.load(workspace_ptr + batch * d_inner + cols, mask=mask, other=0.0)
        normed = (gate * rstd).to(z_ptr.dtype.element_ty).to(tl.float32)
        norm_weight = tl.load(norm_weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + batch * d_inner + cols, (normed * norm_weight).to(out_ptr.dtype.element_ty), mask=mask)


NUM_WARPS = 8  # the grid is small (b * g programs): more warps per program, each holding less of the state tile


def block_sizes(d_conv: int, head_dim: int, d_state: int) -> dict[str, int]:
    return {
        "BLOCK_K": triton.next_power_of_2(d_conv),
        "BLOCK_P": min(32, triton.next_power_of_2(head_dim)),
        "BLOCK_N": triton.next_power_of_2(d_state),
    }


def mamba2_decode_step_triton(
    conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, dt_min, dt_max, eps
):
    b, h, p, n = ssm_state.shape
    K = conv_weight.shape[1]
    g = bc_groups(xbc.shape[1], h, p, n)
    out = torch.empty(b, h * p, dtype=torch.promote_types(z.dtype, norm_weight.dtype), device=z.device)
    # the gate between the two loops: an fp32 output holds it itself, normalised in place
    workspace = out if out.dtype == torch.float32 else torch.empty(b, h * p, dtype=torch.float32, device=z.device)
    new_window = conv_window.new_empty(conv_window.shape)
    new_state = torch.empty(b, h, p, n, dtype=torch.float32, device=ssm_state.device)
    has_bias = conv_bias is not None
    tensors = (conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias if has_bias else conv_weight)
    mamba2_decode_step_kernel[(b, g)](
        *(t.contiguous() for t in tensors),
        *(t.contiguous() for t in (A, D, dt_bias, norm_weight)),
        out,
        new_window,
        new_state,
        workspace,
        float(dt_min),
        float(dt_max),
        float(eps),
        h,
        g,
        p,
        n,
        K=K,
        HAS_BIAS=has_bias,
        **block_sizes(K, p, n),
        num_warps=NUM_WARPS,
    )
    return out, new_window, new_state


# mamba2-small (d_model 512: 16 heads of 64, d_state 128, one group, d_conv 4) in bf16 with an fp32 state
TRITON_KERNELS = [
    KernelSpec(
        name="mamba2_decode_step",
        fn=mamba2_decode_step_kernel,
        signature={
            "window_ptr": "*bf16",
            "state_ptr": "*fp32",
            **dict.fromkeys(["xbc_ptr", "z_ptr", "dt_ptr", "conv_weight_ptr", "conv_bias_ptr"], "*bf16"),
            **dict.fromkeys(["A_ptr", "D_ptr", "dt_bias_ptr"], "*fp32"),
            "norm_weight_ptr": "*bf16",
            "out_ptr": "*bf16",
            "new_window_ptr": "*bf16",
            "new_state_ptr": "*fp32",
            "workspace_ptr": "*fp32",
            **dict.fromkeys(["dt_min", "dt_max", "eps"], "fp32"),
            **dict.fromkeys(["H", "G", "P", "N"], "i32"),
            **dict.fromkeys(["K", "HAS_BIAS", "BLOCK_K", "BLOCK_P", "BLOCK_N"], "constexpr"),
        },
        constexprs={"K": 4, "HAS_BIAS": True, **block_sizes(4, 64, 128)},
        num_warps=NUM_WARPS,
    ),
]
