"""Triton kernel of zoo::moe_schedule: the routing and block schedule of the grouped MoE kernels in one
program, so that it is one launch (a TensorRT ahead-of-time plugin). The grouped gate/up and down ops run
zoo::moe_experts' own kernels (zoo/ops/moe_experts/triton_kernel.py).

The program walks the tokens BLOCK_T at a time: routes them (zoo::moe_layer's `top_k_routing`: K rounds of
argmax, ties to the lowest expert index), stores each slot's weight and expert, and counts the slots per
expert. The groups are padded to multiples of BLOCK_M and laid out in expert order (a cumulative sum over
the experts). Every schedule row is first set to the padding id T*K; then the slots, BLOCK_S at a time
and in slot order, each go to its group's start plus the number of earlier slots of its expert (a
cumulative sum of a one-hot block), which gives the stable order of the reference's argsort. Last, each
block's expert is the number of group ends at or before its first row (searchsorted), -1 past the last
group. Barriers separate the passes, whose threads read what others stored.
"""

import torch
import triton
import triton.language as tl

from zoo.ops.moe_grouped.reference import BLOCK_M, schedule_blocks
from zoo.ops.moe_layer.triton_kernel import top_k_routing
from zoo.ops.triton_aot import KernelSpec

BLOCK_T, BLOCK_S = 32, 128


@triton.jit
def moe_schedule_kernel(
    logits_ptr,
    weights_ptr,
    experts_ptr,
    sorted_slots_ptr,
    block_experts_ptr,
    n_tokens,
    n_experts,
    n_blocks,
    TOP_K: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n_slots = n_tokens * TOP_K
    e_index = tl.arange(0, BLOCK_E)
    e_mask = e_index < n_experts
    k_index = tl.arange(0, BLOCK_K)
    # 1. route the tokens, store each slot's weight and expert, count the slots per expert
    counts = tl.full((BLOCK_E,), 0, tl.int32)
    for t0 in range(0, n_tokens, BLOCK_T):
        tokens = t0 + tl.arange(0, BLOCK_T)
        t_mask = tokens < n_tokens
        logits = tl.load(
            logits_ptr + tokens[:, None] * n_experts + e_index[None, :],
            mask=t_mask[:, None] & e_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        top_experts, top_scores = top_k_routing(logits, n_experts, TOP_K, SOFTMAX_FIRST, BLOCK_T, BLOCK_E, BLOCK_K)
        slot_mask = t_mask[:, None] & (k_index[None, :] < TOP_K)
        slots = tokens[:, None] * TOP_K + k_index[None, :]
        tl.store(weights_ptr + slots, top_scores, mask=slot_mask)
        tl.store(experts_ptr + slots, top_experts.to(tl.int32), mask=slot_mask)
        chosen = (top_experts[:, :, None] == e_index[None, None, :]) & slot_mask[:, :, None]
        counts += tl.sum(tl.sum(chosen.to(tl.int32), axis=1), axis=0)
    # 2. the groups, padded to multiples of BLOCK_M, in expert order
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    # 3. every row starts as padding
    n_rows = n_blocks * BLOCK_M
    for r0 in range(0, n_rows, BLOCK_S):
        rows = r0 + tl.arange(0, BLOCK_S)
        tl.store(sorted_slots_ptr + rows, tl.full((BLOCK_S,), 0, tl.int32) + n_slots, mask=rows < n_rows)
    tl.debug_barrier()  # the experts and the padding stored above are visible to every thread
    # 4. each slot at its group's start plus the number of earlier slots of its expert
    taken = tl.full((BLOCK_E,), 0, tl.int32)
    for s0 in range(0, n_slots, BLOCK_S):
        slot = s0 + tl.arange(0, BLOCK_S)
        s_mask = slot < n_slots
        expert = tl.load(experts_ptr + slot, mask=s_mask, other=BLOCK_E)
        one_hot = ((expert[:, None] == e_index[None, :]) & s_mask[:, None]).to(tl.int32)  # (BLOCK_S, BLOCK_E)
        earlier = tl.cumsum(one_hot, axis=0) - one_hot  # of the same expert, in this block
        row = tl.sum(one_hot * (earlier + (starts + taken)[None, :]), axis=1)
        tl.store(sorted_slots_ptr + row, slot.to(tl.int32), mask=s_mask)
        taken += tl.sum(one_hot, axis=0)
    # 5. each block's expert: how many groups end at or before its first row; -1 past the last group
    for b0 in range(0, n_blocks, BLOCK_S):
        block = b0 + tl.arange(0, BLOCK_S)
        first_row = block * BLOCK_M
        passed = tl.sum(((ends[None, :] <= first_row[:, None]) & e_mask[None, :]).to(tl.int32), axis=1)
        tl.store(block_experts_ptr + block, tl.where(passed < n_experts, passed, -1), mask=block < n_blocks)


def routing_blocks(n_experts: int, top_k: int) -> dict[str, int]:
    return {"BLOCK_E": max(16, triton.next_power_of_2(n_experts)), "BLOCK_K": triton.next_power_of_2(top_k)}


def moe_schedule_triton(router_logits: torch.Tensor, top_k: int, routing: str):
    T, n_experts = router_logits.shape
    n_slots = T * top_k
    n_blocks = schedule_blocks(n_slots, n_experts)
    device = router_logits.device
    weights = torch.empty(n_slots, dtype=torch.float32, device=device)
    experts = torch.empty(n_slots, dtype=torch.int32, device=device)
    sorted_slots = torch.empty(n_blocks * BLOCK_M, dtype=torch.int32, device=device)
    block_experts = torch.empty(n_blocks, dtype=torch.int32, device=device)
    moe_schedule_kernel[(1,)](
        router_logits.contiguous(),
        weights,
        experts,
        sorted_slots,
        block_experts,
        T,
        n_experts,
        n_blocks,
        TOP_K=top_k,
        SOFTMAX_FIRST=routing == "softmax-topk",
        BLOCK_M=BLOCK_M,
        **routing_blocks(n_experts, top_k),
        BLOCK_T=BLOCK_T,
        BLOCK_S=BLOCK_S,
        num_warps=8,
    )
    return weights, experts, sorted_slots, block_experts


def _spec(dtype: str) -> KernelSpec:
    """The kernel for `dtype` logits of a 64-expert top-8 layer."""
    constexprs = {"TOP_K": 8, "SOFTMAX_FIRST": False, "BLOCK_M": BLOCK_M, **routing_blocks(64, 8), "BLOCK_T": BLOCK_T,
                  "BLOCK_S": BLOCK_S}  # fmt: skip
    return KernelSpec(
        name=f"moe_schedule_{dtype}",
        fn=moe_schedule_kernel,
        signature={
            "logits_ptr": f"*{dtype}",
            "weights_ptr": "*fp32",
            "experts_ptr": "*i32",
            "sorted_slots_ptr": "*i32",
            "block_experts_ptr": "*i32",
            **dict.fromkeys(("n_tokens", "n_experts", "n_blocks"), "i32"),
            **dict.fromkeys(constexprs, "constexpr"),
        },  # fmt: skip
        constexprs=constexprs,
        num_warps=8,
    )


TRITON_KERNELS = [_spec("fp32"), _spec("bf16")]
