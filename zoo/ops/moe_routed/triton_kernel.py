"""Triton kernels of the routed MoE ops: one launch each, no block schedule, so that each is a TensorRT
ahead-of-time plugin.

Every program routes its token from the router logits (`route_token`: zoo::moe_layer's `top_k_routing`,
K rounds of argmax over the N logits in fp32, so the experts come out in descending order as torch.topk
gives them, and among exactly equal scores the lowest expert index wins). The weights are vectors over
the matrix rows (tl.sum of a broadcast product), not tl.dot: a program holds one token, and decode's few
tokens leave nothing to share a tile between.
- gate/up: a program per (routed slot t*K + k, block of BLOCK_F hidden units) streams those rows of its
  expert's [gate; up] matrix over d in BLOCK_D steps and stores act(gate) * up (or act(up)) in x's dtype;
- down: a program per (token, block of BLOCK_N output channels) adds, for each of the token's K slots, the
  routing weight times that block of W_down h over F in BLOCK_F steps, in fp32.
"""

import torch
import triton
import triton.language as tl

from zoo.ops.moe_experts.triton_kernel import ACTIVATION_CODES, activate
from zoo.ops.moe_layer.triton_kernel import top_k_routing
from zoo.ops.triton_aot import KernelSpec

BLOCK_F, BLOCK_D, BLOCK_N = 64, 32, 64


@triton.jit
def route_token(logits_ptr, n_experts, TOP_K: tl.constexpr, SOFTMAX_FIRST: tl.constexpr, BLOCK_E: tl.constexpr,
                BLOCK_K: tl.constexpr):  # fmt: skip
    """(experts (BLOCK_K,) int64, weights (BLOCK_K,) fp32) of one token, entries past TOP_K unused:
    zoo::moe_layer's `top_k_routing` on a block of one row."""
    experts = tl.arange(0, BLOCK_E)
    logits = tl.load(logits_ptr + experts[None, :], mask=(experts < n_experts)[None, :], other=0.0).to(tl.float32)
    top_experts, top_scores = top_k_routing(logits, n_experts, TOP_K, SOFTMAX_FIRST, 1, BLOCK_E, BLOCK_K)
    return tl.sum(top_experts, axis=0), tl.sum(top_scores, axis=0)  # the one row


@triton.jit
def moe_routed_gate_up_kernel(
    x_ptr,
    logits_ptr,
    w_ptr,
    h_ptr,
    n_experts,
    d_model,
    d_expert,
    TOP_K: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr,
    GATED: tl.constexpr,
    ACTIVATION: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    slot = tl.program_id(0).to(tl.int64)  # token * TOP_K + k
    token = slot // TOP_K
    k = slot % TOP_K
    experts, _ = route_token(logits_ptr + token * n_experts, n_experts, TOP_K, SOFTMAX_FIRST, BLOCK_E, BLOCK_K)
    expert = tl.sum(tl.where(tl.arange(0, BLOCK_K) == k, experts, 0), axis=0).to(tl.int64)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_mask = f < d_expert
    rows_per_expert = 2 * d_expert if GATED else d_expert
    w_expert = w_ptr + expert * rows_per_expert * d_model
    up_rows = f + d_expert if GATED else f  # the up rows follow the gate rows in w_gate_up when gated
    acc_up = tl.full((BLOCK_F,), 0.0, tl.float32)
    acc_gate = tl.full((BLOCK_F,), 0.0, tl.float32)
    for d0 in range(0, d_model, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < d_model
        x = tl.load(x_ptr + token * d_model + d, mask=d_mask, other=0.0).to(tl.float32)
        w_mask = f_mask[:, None] & d_mask[None, :]
        w_up = tl.load(w_expert + up_rows[:, None] * d_model + d[None, :], mask=w_mask, other=0.0)
        acc_up += tl.sum(w_up.to(tl.float32) * x[None, :], axis=1)
        if GATED:
            w_gate = tl.load(w_expert + f[:, None] * d_model + d[None, :], mask=w_mask, other=0.0)
            acc_gate += tl.sum(w_gate.to(tl.float32) * x[None, :], axis=1)
    a = activate(acc_gate if GATED else acc_up, ACTIVATION)
    h = a * acc_up if GATED else a
    tl.store(h_ptr + slot * d_expert + f, h.to(h_ptr.dtype.element_ty), mask=f_mask)


@triton.jit
def moe_routed_down_kernel(
    h_ptr,
    logits_ptr,
    w_ptr,
    out_ptr,
    n_experts,
    d_model,
    d_expert,
    TOP_K: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    experts, weights = route_token(logits_ptr + token * n_experts, n_experts, TOP_K, SOFTMAX_FIRST, BLOCK_E, BLOCK_K)
    k_index = tl.arange(0, BLOCK_K)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < d_model
    acc = tl.full((BLOCK_N,), 0.0, tl.float32)
    for k in range(TOP_K):
        expert = tl.sum(tl.where(k_index == k, experts, 0), axis=0).to(tl.int64)
        weight = tl.sum(tl.where(k_index == k, weights, 0.0), axis=0)
        w_expert = w_ptr + expert * d_model * d_expert
        slot_out = tl.full((BLOCK_N,), 0.0, tl.float32)
        for f0 in range(0, d_expert, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            f_mask = f < d_expert
            h = tl.load(h_ptr + (token * TOP_K + k) * d_expert + f, mask=f_mask, other=0.0).to(tl.float32)
            w = tl.load(
                w_expert + n[:, None] * d_expert + f[None, :], mask=n_mask[:, None] & f_mask[None, :], other=0.0
            )
            slot_out += tl.sum(w.to(tl.float32) * h[None, :], axis=1)
        acc += weight * slot_out
    tl.store(out_ptr + token * d_model + n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


def routing_blocks(n_experts: int, top_k: int) -> dict[str, int]:
    return {"BLOCK_E": triton.next_power_of_2(n_experts), "BLOCK_K": triton.next_power_of_2(top_k)}


def moe_routed_gate_up_triton(x, router_logits, w_gate_up, top_k, routing, activation, gated):
    T, d_model = x.shape
    n_experts, rows, _ = w_gate_up.shape
    d_expert = rows // 2 if gated else rows
    h = torch.empty(T, top_k, d_expert, dtype=x.dtype, device=x.device)
    moe_routed_gate_up_kernel[(T * top_k, triton.cdiv(d_expert, BLOCK_F))](
        x.contiguous(),
        router_logits.contiguous(),
        w_gate_up.contiguous(),
        h,
        n_experts,
        d_model,
        d_expert,
        TOP_K=top_k,
        SOFTMAX_FIRST=routing == "softmax-topk",
        GATED=gated,
        ACTIVATION=ACTIVATION_CODES[activation],
        **routing_blocks(n_experts, top_k),
        BLOCK_F=BLOCK_F,
        BLOCK_D=BLOCK_D,
    )
    return h


def moe_routed_down_triton(h, router_logits, w_down, top_k, routing):
    T = h.shape[0]
    n_experts, d_model, d_expert = w_down.shape
    out = torch.empty(T, d_model, dtype=h.dtype, device=h.device)
    moe_routed_down_kernel[(T, triton.cdiv(d_model, BLOCK_N))](
        h.contiguous(),
        router_logits.contiguous(),
        w_down.contiguous(),
        out,
        n_experts,
        d_model,
        d_expert,
        TOP_K=top_k,
        SOFTMAX_FIRST=routing == "softmax-topk",
        **routing_blocks(n_experts, top_k),
        BLOCK_N=BLOCK_N,
        BLOCK_F=BLOCK_F,
    )
    return out


def _specs(dtype: str) -> list[KernelSpec]:
    """The two kernels for `dtype` activations and weights, as a 64-expert top-8 SwiGLU layer runs them."""
    routing = {"TOP_K": 8, "SOFTMAX_FIRST": False, **routing_blocks(64, 8)}
    sizes = dict.fromkeys(("n_experts", "d_model", "d_expert"), "i32")
    gate_up_constexprs = {**routing, "GATED": True, "ACTIVATION": ACTIVATION_CODES["silu"], "BLOCK_F": BLOCK_F,
                          "BLOCK_D": BLOCK_D}  # fmt: skip
    down_constexprs = {**routing, "BLOCK_N": BLOCK_N, "BLOCK_F": BLOCK_F}
    return [
        KernelSpec(
            name=f"moe_routed_gate_up_{dtype}",
            fn=moe_routed_gate_up_kernel,
            signature={
                **dict.fromkeys(("x_ptr", "logits_ptr", "w_ptr", "h_ptr"), f"*{dtype}"),
                **sizes,
                **dict.fromkeys(gate_up_constexprs, "constexpr"),
            },  # fmt: skip
            constexprs=gate_up_constexprs,
        ),
        KernelSpec(
            name=f"moe_routed_down_{dtype}",
            fn=moe_routed_down_kernel,
            signature={
                **dict.fromkeys(("h_ptr", "logits_ptr", "w_ptr", "out_ptr"), f"*{dtype}"),
                **sizes,
                **dict.fromkeys(down_constexprs, "constexpr"),
            },  # fmt: skip
            constexprs=down_constexprs,
        ),
    ]


TRITON_KERNELS = _specs("fp32") + _specs("bf16")
