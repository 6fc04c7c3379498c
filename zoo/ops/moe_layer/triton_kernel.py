"""Triton implementation of zoo::moe_layer: one routing kernel (router matmul, softmax, top-K), then
zoo::moe_experts' grouped expert kernels on its result.

The routing kernel: a program per block of BLOCK_T tokens computes the logits x_blk @ router_weight^T over
d in BLOCK_D steps (the N experts padded to a power of two and masked), rounds them to x's dtype as the
unfused graph's linear does, and then, in fp32, routes (docs/algorithms.md §3.3):
- "softmax-topk": p = softmax over the N logits, the K largest p, no renormalisation;
- "topk-softmax": the K largest logits, softmax over those K.
The top-K is K rounds of argmax, each masking its winner, so the experts come out in descending order as
torch.topk gives them; among exactly equal scores the lowest expert index wins (torch.topk leaves the order
of ties unspecified, so the two can differ only in which of equal experts comes first or is chosen).
The expert kernels and their device-side block schedule are zoo::moe_experts' (see its triton_kernel.py).
The routing kernel reduces with tl.max / tl.min / tl.sum, jitted helpers: it compiles for sm_90 where
TRITON_INTERPRET is off (zoo.ops.triton_aot.compile_all compiles in such a child process).
"""

import torch
import triton
import triton.language as tl

from zoo.ops.moe_experts.triton_kernel import dot_options, routed_experts_triton
from zoo.ops.triton_aot import KernelSpec

ROUTING_BLOCK_T, ROUTING_BLOCK_D = 32, 32


@triton.jit
def top_k_routing(logits, n_experts, TOP_K: tl.constexpr, SOFTMAX_FIRST: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """(top_experts (BLOCK_T, BLOCK_K) int64, top_scores (BLOCK_T, BLOCK_K) fp32) of fp32 logits (BLOCK_T,
    BLOCK_N) whose columns past n_experts are padding, routed as the module docstring says."""
    experts = tl.arange(0, BLOCK_N)
    expert_mask = experts < n_experts
    logits = tl.where(expert_mask[None, :], logits, float("-inf"))
    row_max = tl.max(logits, axis=1)
    if SOFTMAX_FIRST:
        probs = tl.exp(logits - row_max[:, None])
        probs = probs / tl.sum(probs, axis=1)[:, None]
        scores = tl.where(expert_mask[None, :], probs, float("-inf"))  # padding never wins, even over p = 0
    else:
        scores = logits
    k_index = tl.arange(0, BLOCK_K)
    top_scores = tl.full((BLOCK_T, BLOCK_K), 0.0, tl.float32)
    top_experts = tl.full((BLOCK_T, BLOCK_K), 0, tl.int64)
    for k in range(TOP_K):
        best = tl.max(scores, axis=1)
        winner = tl.min(tl.where(scores == best[:, None], experts[None, :], BLOCK_N), axis=1)  # lowest tied index
        top_scores = tl.where(k_index[None, :] == k, best[:, None], top_scores)
        top_experts = tl.where(k_index[None, :] == k, winner[:, None], top_experts)
        scores = tl.where(experts[None, :] == winner[:, None], float("-inf"), scores)
    if not SOFTMAX_FIRST:
        # softmax over the K chosen logits; the largest of them is the row's maximum
        top = tl.where(k_index[None, :] < TOP_K, tl.exp(top_scores - row_max[:, None]), 0.0)
        top_scores = top / tl.sum(top, axis=1)[:, None]
    return top_experts, top_scores


@triton.jit
def moe_routing_kernel(
    x_ptr,
    w_ptr,
    weights_ptr,
    experts_ptr,
    n_tokens,
    d_model,
    n_experts,
    stride_x,
    stride_w,
    TOP_K: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_mask = tokens < n_tokens
    experts = tl.arange(0, BLOCK_N)
    expert_mask = experts < n_experts
    acc = tl.full((BLOCK_T, BLOCK_N), 0.0, tl.float32)
    for d0 in range(0, d_model, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < d_model
        x = tl.load(
            x_ptr + tokens[:, None] * stride_x + d[None, :], mask=token_mask[:, None] & d_mask[None, :], other=0.0
        )
        # (BLOCK_D, BLOCK_N) tile of router_weight^T
        w = tl.load(
            w_ptr + experts[None, :] * stride_w + d[:, None], mask=d_mask[:, None] & expert_mask[None, :], other=0.0
        )
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)
    # the logits rounded to x's dtype, as the router linear of the unfused graph gives them; routing in fp32
    if x_ptr.dtype.element_ty == tl.bfloat16:
        # round to nearest even on the fp32 bits: Triton's interpreter truncates in fp32 -> bf16 casts
        bits = acc.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        logits = bits.to(tl.float32, bitcast=True)
    else:
        logits = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
    top_experts, top_scores = top_k_routing(logits, n_experts, TOP_K, SOFTMAX_FIRST, BLOCK_T, BLOCK_N, BLOCK_K)
    k_index = tl.arange(0, BLOCK_K)
    out_mask = token_mask[:, None] & (k_index[None, :] < TOP_K)
    offsets = tokens[:, None] * TOP_K + k_index[None, :]
    tl.store(weights_ptr + offsets, top_scores, mask=out_mask)
    tl.store(experts_ptr + offsets, top_experts, mask=out_mask)


def moe_routing_triton(
    x: torch.Tensor, router_weight: torch.Tensor, top_k: int, routing: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, d), router_weight (N, d) -> (routing weights (T, K) fp32, expert ids (T, K) int64), as
    zoo.ops.moe_experts.route(F.linear(x, router_weight), top_k, routing) gives them."""
    T, d_model = x.shape
    n_experts = router_weight.shape[0]
    x, router_weight = x.contiguous(), router_weight.contiguous()
    upcast, precision = dot_options(x)
    weights = torch.empty(T, top_k, dtype=torch.float32, device=x.device)
    experts = torch.empty(T, top_k, dtype=torch.int64, device=x.device)
    moe_routing_kernel[(triton.cdiv(T, ROUTING_BLOCK_T),)](
        x,
        router_weight,
        weights,
        experts,
        T,
        d_model,
        n_experts,
        x.stride(0),
        router_weight.stride(0),
        TOP_K=top_k,
        SOFTMAX_FIRST=routing == "softmax-topk",
        UPCAST=upcast,
        DOT_PRECISION=precision,
        BLOCK_T=ROUTING_BLOCK_T,
        BLOCK_N=max(16, triton.next_power_of_2(n_experts)),  # tl.dot needs 16 columns at least
        BLOCK_K=triton.next_power_of_2(top_k),
        BLOCK_D=ROUTING_BLOCK_D,
    )
    return weights, experts


def moe_layer_triton(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    weights, experts = moe_routing_triton(x, router_weight, top_k, routing)
    return routed_experts_triton(x, weights, experts, w_gate_up, w_down, activation, gated)


def _routing_spec() -> KernelSpec:
    """The routing kernel as the launcher runs it on the GPU for bf16 inputs: 64 experts, top-8, softmax
    first (d_model is a runtime argument; the spec is the d = 1024 layer's)."""
    constexprs = {
        "TOP_K": 8,
        "SOFTMAX_FIRST": True,
        "UPCAST": False,
        "DOT_PRECISION": "tf32",
        "BLOCK_T": ROUTING_BLOCK_T,
        "BLOCK_N": 64,
        "BLOCK_K": 8,
        "BLOCK_D": ROUTING_BLOCK_D,
    }
    return KernelSpec(
        name="moe_layer_routing_bf16",
        fn=moe_routing_kernel,
        signature={
            **dict.fromkeys(("x_ptr", "w_ptr"), "*bf16"),
            "weights_ptr": "*fp32",
            "experts_ptr": "*i64",
            **dict.fromkeys(("n_tokens", "d_model", "n_experts", "stride_x", "stride_w"), "i32"),
            **dict.fromkeys(constexprs, "constexpr"),
        },
        constexprs=constexprs,
    )


TRITON_KERNELS = [_routing_spec()]
