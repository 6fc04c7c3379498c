"""One Mamba-2 decode step as a Triton kernel: one program per (batch, head, block of head_dim rows),
holding its (BLOCK_P, BLOCK_N) tile of the state; dt's bias, softplus and clamp, the decay, the rank-1
input, y = S C and the D skip all happen in the one pass over the tile."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def ssd_state_update_kernel(
    state_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    dt_bias_ptr,
    y_ptr,
    new_state_ptr,
    dt_min,
    dt_max,
    H,
    G,
    P,
    N,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    group = head // (H // G)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    dt = tl.load(dt_ptr + batch * H + head).to(tl.float32) + tl.load(dt_bias_ptr + head).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus, with torch's threshold of 20
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    decay = tl.exp(dt * tl.load(A_ptr + head).to(tl.float32))
    x = tl.load(x_ptr + (batch * H + head) * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    bc_offs = (batch * G + group) * N + offs_n
    B = tl.load(B_ptr + bc_offs, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + bc_offs, mask=mask_n, other=0.0).to(tl.float32)
    state_offs = ((batch * H + head) * P + offs_p[:, None]) * N + offs_n[None, :]
    state_mask = mask_p[:, None] & mask_n[None, :]
    state = tl.load(state_ptr + state_offs, mask=state_mask, other=0.0).to(tl.float32)
    state = state * decay + (dt * x)[:, None] * B[None, :]
    y = tl.sum(state * C[None, :], axis=1) + tl.load(D_ptr + head).to(tl.float32) * x
    tl.store(new_state_ptr + state_offs, state, mask=state_mask)
    tl.store(y_ptr + (batch * H + head) * P + offs_p, y, mask=mask_p)


def block_sizes(head_dim: int, d_state: int) -> dict[str, int]:
    return {"BLOCK_P": min(32, triton.next_power_of_2(head_dim)), "BLOCK_N": triton.next_power_of_2(d_state)}


def ssd_state_update_triton(state, x, dt, A, B, C, D, dt_bias, dt_min, dt_max):
    b, h, p, n = state.shape
    g = B.shape[1]
    y = torch.empty(b, h, p, dtype=torch.float32, device=x.device)
    new_state = torch.empty(b, h, p, n, dtype=torch.float32, device=x.device)
    blocks = block_sizes(p, n)
    grid = (b, h, triton.cdiv(p, blocks["BLOCK_P"]))
    tensors = (state, x, dt, A, B, C, D, dt_bias)
    ssd_state_update_kernel[grid](
        *(t.contiguous() for t in tensors), y, new_state, float(dt_min), float(dt_max), h, g, p, n, **blocks
    )
    return y, new_state


TRITON_KERNELS = [
    KernelSpec(
        name="ssd_state_update",
        fn=ssd_state_update_kernel,
        signature={
            **dict.fromkeys(["state_ptr", "x_ptr", "dt_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr"], "*fp32"),
            **dict.fromkeys(["dt_bias_ptr", "y_ptr", "new_state_ptr"], "*fp32"),
            **dict.fromkeys(["dt_min", "dt_max"], "fp32"),
            **dict.fromkeys(["H", "G", "P", "N"], "i32"),
            **dict.fromkeys(["BLOCK_P", "BLOCK_N"], "constexpr"),
        },
        constexprs=block_sizes(64, 128),
        num_warps=4,
    ),
]
