"""Triton implementation of zoo::moe_experts: a grouped GEMM over blocks of token slots sorted by expert.

The routing and schedule are one kernel (zoo::moe_schedule's, zoo/ops/moe_grouped/triton_kernel.py; after
zoo::moe_layer's routing kernel, `block_schedule`'s torch ops) and have a fixed maximum size, so nothing
reads counts on the host and a CUDA graph can hold the whole op ("align block size", as vLLM's fused MoE
does):
- the T*K slots (token t, choice k) are sorted by expert; each expert's group is padded to a multiple of
  BLOCK_M; `sorted_slots` lists the slot ids in that order, with T*K marking a padding row;
- a group of c slots takes ceil(c / BLOCK_M) blocks, so there are at most ceil(T*K / BLOCK_M) + N blocks;
  `block_experts` gives each block's expert, -1 for the blocks past the last group (they exit at once).
Kernel 1 computes h = act(x W_gate^T) * (x W_up^T) (or act(x W_up^T)) for a block of rows and hidden units,
from the fused w_gate_up; kernel 2 computes h W_down^T times the slot's routing weight and stores it at the
slot's row, each slot written once (no atomics); the sum over a token's K slots is a torch op. Each
kernel is also an op of its own (zoo::moe_grouped_gate_up, zoo::moe_grouped_down), the TensorRT form of a
prefill. The expert activation is a jitted helper (`activate`), which zoo::moe_routed's gate/up kernel
shares.
"""

import torch
import triton
import triton.language as tl

from zoo.ops.moe_grouped.reference import BLOCK_M, block_schedule
from zoo.ops.triton_aot import KernelSpec

ACTIVATION_CODES = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "relu2": 4}
BLOCK_F, BLOCK_D = 64, 32


@triton.jit
def activate(a, ACTIVATION: tl.constexpr):
    """The expert activation of ACTIVATION_CODES on fp32 values."""
    if ACTIVATION == 0:  # silu
        a = a / (1.0 + tl.exp(-a))
    elif ACTIVATION == 1:  # gelu (erf)
        a = 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))
    elif ACTIVATION == 2:  # gelu, tanh approximation: 0.5 a (1 + tanh(u)) = a sigmoid(2u)
        u = 0.7978845608028654 * (a + 0.044715 * a * a * a)
        a = a / (1.0 + tl.exp(-2.0 * u))
    elif ACTIVATION == 3:  # relu
        a = tl.maximum(a, 0.0)
    else:  # squared relu
        a = tl.maximum(a, 0.0)
        a = a * a
    return a


@triton.jit
def moe_gate_up_kernel(
    x_ptr,
    w_ptr,
    sorted_slots_ptr,
    block_experts_ptr,
    h_ptr,
    n_slots,
    d_model,
    d_expert,
    stride_x,
    stride_we,
    stride_wf,
    stride_h,
    TOP_K: tl.constexpr,
    GATED: tl.constexpr,
    ACTIVATION: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_experts_ptr + block)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_mask = f < d_expert
    if expert >= 0:
        slots = tl.load(sorted_slots_ptr + rows)
        valid = slots < n_slots
        tokens = slots // TOP_K
        w_expert = w_ptr + expert.to(tl.int64) * stride_we
        acc_up = tl.full((BLOCK_M, BLOCK_F), 0.0, tl.float32)
        acc_gate = tl.full((BLOCK_M, BLOCK_F), 0.0, tl.float32)
        for k0 in range(0, d_model, BLOCK_D):
            k = k0 + tl.arange(0, BLOCK_D)
            k_mask = k < d_model
            x = tl.load(
                x_ptr + tokens[:, None] * stride_x + k[None, :], mask=valid[:, None] & k_mask[None, :], other=0.0
            )
            w_mask = k_mask[:, None] & f_mask[None, :]
            # (BLOCK_D, BLOCK_F) tiles of W^T: the up rows follow the gate rows in w_gate_up when gated
            up_rows = f + d_expert if GATED else f
            w_up = tl.load(w_expert + up_rows[None, :] * stride_wf + k[:, None], mask=w_mask, other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
                w_up = w_up.to(tl.float32)
            acc_up += tl.dot(x, w_up, input_precision=DOT_PRECISION)
            if GATED:
                w_gate = tl.load(w_expert + f[None, :] * stride_wf + k[:, None], mask=w_mask, other=0.0)
                if UPCAST:
                    w_gate = w_gate.to(tl.float32)
                acc_gate += tl.dot(x, w_gate, input_precision=DOT_PRECISION)
        a = activate(acc_gate if GATED else acc_up, ACTIVATION)
        h = a * acc_up if GATED else a  # 0 on padding rows, whose x is loaded as 0
        tl.store(h_ptr + rows[:, None] * stride_h + f[None, :], h.to(h_ptr.dtype.element_ty), mask=f_mask[None, :])
    else:  # the blocks past the last group: rows of 0
        zeros = tl.full((BLOCK_M, BLOCK_F), 0.0, tl.float32).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * stride_h + f[None, :], zeros, mask=f_mask[None, :])


@triton.jit
def moe_down_kernel(
    h_ptr,
    w_ptr,
    sorted_slots_ptr,
    block_experts_ptr,
    slot_weights_ptr,
    out_ptr,
    n_slots,
    d_model,
    d_expert,
    stride_h,
    stride_we,
    stride_wd,
    stride_out,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_experts_ptr + block)
    if expert >= 0:  # blocks past the last group do nothing
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        slots = tl.load(sorted_slots_ptr + rows)
        valid = slots < n_slots
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = n < d_model
        w_expert = w_ptr + expert.to(tl.int64) * stride_we
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        for f0 in range(0, d_expert, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            f_mask = f < d_expert
            h = tl.load(h_ptr + rows[:, None] * stride_h + f[None, :], mask=valid[:, None] & f_mask[None, :], other=0.0)
            # (BLOCK_F, BLOCK_N) tile of W_down^T
            w = tl.load(
                w_expert + n[None, :] * stride_wd + f[:, None], mask=f_mask[:, None] & n_mask[None, :], other=0.0
            )
            if UPCAST:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(h, w, input_precision=DOT_PRECISION)
        weight = tl.load(slot_weights_ptr + slots, mask=valid, other=0.0)
        acc = acc * weight[:, None]
        tl.store(out_ptr + slots[:, None] * stride_out + n[None, :], acc, mask=valid[:, None] & n_mask[None, :])


def dot_options(x: torch.Tensor) -> tuple[bool, str]:
    """(upcast, input precision) of the tiles' dot products: the interpreter holds bf16 as raw bits, and
    fp32 tiles are multiplied in fp32 anyway, so tiles are upcast off the GPU; fp32 inputs are multiplied
    in full fp32 (as torch's matmul does by default), not tf32."""
    upcast = x.device.type != "cuda" or x.dtype == torch.float32
    return upcast, "ieee" if x.dtype == torch.float32 else "tf32"


def moe_experts_triton(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    from zoo.ops.moe_grouped.triton_kernel import moe_schedule_triton

    weights, _, sorted_slots, block_experts = moe_schedule_triton(router_logits, top_k, routing)
    return grouped_experts_triton(x, weights, sorted_slots, block_experts, w_gate_up, w_down, top_k, activation, gated)


def grouped_experts_triton(x, slot_weights, sorted_slots, block_experts, w_gate_up, w_down, top_k, activation, gated):
    """The two grouped kernels on a schedule, then the sum over each token's K slots (a torch op)."""
    h = moe_grouped_gate_up_triton(x, w_gate_up, sorted_slots, block_experts, top_k, activation, gated)
    out = moe_grouped_down_triton(h, w_down, sorted_slots, block_experts, slot_weights)
    return out.view(x.shape[0], top_k, -1).sum(dim=1).to(x.dtype)


def routed_experts_triton(
    x: torch.Tensor,
    weights: torch.Tensor,
    experts: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """The expert compute of routed tokens: weights (T, K) fp32 and experts (T, K) from the routing ->
    y (T, d) = sum over k of weights[:, k] x expert_k(x), by the gate/up and down kernels."""
    sorted_slots, block_experts = block_schedule(experts.flatten(), w_down.shape[0], BLOCK_M)
    return grouped_experts_triton(x, weights.flatten(), sorted_slots, block_experts, w_gate_up, w_down,
                                  experts.shape[1], activation, gated)  # fmt: skip


def moe_grouped_gate_up_triton(x, w_gate_up, sorted_slots, block_experts, top_k, activation, gated):
    """h (blocks * BLOCK_M, F) in x's dtype: row r holds the hidden activations of slot sorted_slots[r]
    under its block's expert; padding rows are 0 (every element is written: a TensorRT output)."""
    d_model = x.shape[1]
    d_expert = w_gate_up.shape[1] // 2 if gated else w_gate_up.shape[1]
    x, w_gate_up = x.contiguous(), w_gate_up.contiguous()
    n_blocks = block_experts.numel()
    upcast, precision = dot_options(x)
    h = torch.empty(n_blocks * BLOCK_M, d_expert, dtype=x.dtype, device=x.device)
    moe_gate_up_kernel[(n_blocks, triton.cdiv(d_expert, BLOCK_F))](
        x,
        w_gate_up,
        sorted_slots,
        block_experts,
        h,
        x.shape[0] * top_k,
        d_model,
        d_expert,
        x.stride(0),
        w_gate_up.stride(0),
        w_gate_up.stride(1),
        h.stride(0),
        TOP_K=top_k,
        GATED=gated,
        ACTIVATION=ACTIVATION_CODES[activation],
        UPCAST=upcast,
        DOT_PRECISION=precision,
        BLOCK_M=BLOCK_M,
        BLOCK_F=BLOCK_F,
        BLOCK_D=BLOCK_D,
    )
    return h


def moe_grouped_down_triton(h, w_down, sorted_slots, block_experts, slot_weights):
    """out (T*K, d) fp32: slot s's row is slot_weights[s] x W_down[its expert] h[its row]."""
    n_experts, d_model, d_expert = w_down.shape
    n_slots = slot_weights.numel()
    w_down = w_down.contiguous()
    upcast, precision = dot_options(h)
    out = torch.empty(n_slots, d_model, dtype=torch.float32, device=h.device)
    moe_down_kernel[(block_experts.numel(), triton.cdiv(d_model, BLOCK_F))](
        h,
        w_down,
        sorted_slots,
        block_experts,
        slot_weights.contiguous(),
        out,
        n_slots,
        d_model,
        d_expert,
        h.stride(0),
        w_down.stride(0),
        w_down.stride(1),
        out.stride(0),
        UPCAST=upcast,
        DOT_PRECISION=precision,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_F,
        BLOCK_F=BLOCK_D,
    )
    return out


def _specs(dtype: str) -> list[KernelSpec]:
    """The two kernels as the launcher runs them on the GPU for `dtype` inputs (SwiGLU, top-8)."""
    shared = {"UPCAST": dtype == "fp32", "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32", "BLOCK_M": BLOCK_M}
    gate_up_constexprs = {"TOP_K": 8, "GATED": True, "ACTIVATION": ACTIVATION_CODES["silu"], **shared}
    gate_up_constexprs.update(BLOCK_F=BLOCK_F, BLOCK_D=BLOCK_D)
    gate_up = KernelSpec(
        name=f"moe_gate_up_{dtype}",
        fn=moe_gate_up_kernel,
        signature={
            **dict.fromkeys(("x_ptr", "w_ptr"), f"*{dtype}"),
            **dict.fromkeys(("sorted_slots_ptr", "block_experts_ptr"), "*i32"),
            "h_ptr": f"*{dtype}",
            **dict.fromkeys(
                ("n_slots", "d_model", "d_expert", "stride_x", "stride_we", "stride_wf", "stride_h"), "i32"
            ),
            **dict.fromkeys(gate_up_constexprs, "constexpr"),
        },
        constexprs=gate_up_constexprs,
    )
    down_constexprs = {**shared, "BLOCK_N": BLOCK_F, "BLOCK_F": BLOCK_D}
    down = KernelSpec(
        name=f"moe_down_{dtype}",
        fn=moe_down_kernel,
        signature={
            **dict.fromkeys(("h_ptr", "w_ptr"), f"*{dtype}"),
            **dict.fromkeys(("sorted_slots_ptr", "block_experts_ptr"), "*i32"),
            "slot_weights_ptr": "*fp32",
            "out_ptr": "*fp32",
            **dict.fromkeys(
                ("n_slots", "d_model", "d_expert", "stride_h", "stride_we", "stride_wd", "stride_out"), "i32"
            ),
            **dict.fromkeys(down_constexprs, "constexpr"),
        },
        constexprs=down_constexprs,
    )
    return [gate_up, down]


TRITON_KERNELS = _specs("fp32") + _specs("bf16")
