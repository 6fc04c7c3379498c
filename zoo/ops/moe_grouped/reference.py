"""zoo::moe_experts' grouped computation as three steps (docs/algorithms.md §3.3), in plain PyTorch with
static shapes: the oracle of the three grouped ops.
    slot_weights, slot_experts, sorted_slots, block_experts = moe_schedule(router_logits, K, routing)
    h = moe_grouped_gate_up(x, w_gate_up, sorted_slots, block_experts, K, ...)       (R, F)
    out = moe_grouped_down(h, w_down, sorted_slots, block_experts, slot_weights)      (T*K, d) fp32
    y = out.view(T, K, d).sum(1).to(x.dtype)                                          = moe_experts(...)
The schedule ("align block size", as vLLM's fused MoE does): the T*K slots (token t, choice k; slot id
t*K + k) sorted by expert, stably; each expert's group padded to a multiple of BLOCK_M rows; sorted_slots
lists the slot ids in that order with T*K marking a padding row; there are at most B = cdiv(T*K, BLOCK_M)
+ N blocks, R = B * BLOCK_M rows, and block_experts gives each block's expert, -1 past the last group.
Every size is a function of T, K and N, so the schedule has a fixed size and nothing reads counts on the
host."""

import torch

from zoo.ops.moe_experts.reference import expert_hidden, route

BLOCK_M = 64  # rows per block of the grouped kernels


def schedule_blocks(n_slots, n_experts: int):
    """B, the number of blocks of a schedule of n_slots slots over n_experts (ints, SymInts or sizes)."""
    return (n_slots + BLOCK_M - 1) // BLOCK_M + n_experts


def block_schedule(flat_experts: torch.Tensor, n_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted_slots (B * block_m,) int32, block_experts (B,) int32) for the slots' experts flat_experts
    (T*K,), with torch ops only (no host sync)."""
    n_slots = flat_experts.numel()
    device = flat_experts.device
    max_blocks = -(-n_slots // block_m) + n_experts
    counts = torch.zeros(n_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat_experts, torch.ones_like(flat_experts))
    padded_counts = (counts + block_m - 1) // block_m * block_m
    padded_ends = padded_counts.cumsum(0)
    order = flat_experts.argsort(stable=True)
    sorted_experts = flat_experts[order]
    rank_in_group = torch.arange(n_slots, device=device) - (counts.cumsum(0) - counts)[sorted_experts]
    rows = (padded_ends - padded_counts)[sorted_experts] + rank_in_group
    sorted_slots = torch.full((max_blocks * block_m,), n_slots, dtype=torch.int32, device=device)
    sorted_slots.index_copy_(0, rows, order.to(torch.int32))
    block_starts = torch.arange(max_blocks, device=device) * block_m
    block_experts = torch.searchsorted(padded_ends, block_starts, right=True)
    block_experts = torch.where(block_experts < n_experts, block_experts, -1).to(torch.int32)
    return sorted_slots, block_experts


def moe_schedule_ref(
    router_logits: torch.Tensor, top_k: int, routing: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """router_logits (T, N) -> (slot_weights (T*K,) fp32, slot_experts (T*K,) int32, sorted_slots (R,) int32,
    block_experts (B,) int32)."""
    weights, experts = route(router_logits, top_k, routing)
    flat = experts.flatten()
    sorted_slots, block_experts = block_schedule(flat, router_logits.shape[1], BLOCK_M)
    return weights.flatten(), flat.to(torch.int32), sorted_slots, block_experts


def _row_experts(block_experts: torch.Tensor) -> torch.Tensor:
    """The expert of every row (0 for the blocks past the last group, whose rows are all padding)."""
    return block_experts.long().clamp(min=0).repeat_interleave(BLOCK_M)


def moe_grouped_gate_up_ref(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    sorted_slots: torch.Tensor,
    block_experts: torch.Tensor,
    top_k: int,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), w_gate_up (N, 2F|F, d), the schedule -> h (R, F) in x's dtype: row r holds expert_hidden of
    token sorted_slots[r] // K under its block's expert (computed in fp32); padding rows are 0."""
    valid = sorted_slots.long() < x.shape[0] * top_k
    tokens = torch.where(valid, sorted_slots.long(), 0) // top_k
    projections = torch.einsum("rfd,rd->rf", w_gate_up[_row_experts(block_experts)].float(), x[tokens].float())
    return (expert_hidden(projections, activation, gated) * valid[:, None]).to(x.dtype)


def moe_grouped_down_ref(
    h: torch.Tensor,
    w_down: torch.Tensor,
    sorted_slots: torch.Tensor,
    block_experts: torch.Tensor,
    slot_weights: torch.Tensor,
) -> torch.Tensor:
    """h (R, F), w_down (N, d, F), the schedule, slot_weights (T*K,) fp32 -> out (T*K, d) fp32: slot s's row
    is slot_weights[s] x W_down[e] h[r] for the row r that lists s and its block's expert e."""
    n_slots = slot_weights.numel()
    rows = torch.einsum("rdf,rf->rd", w_down[_row_experts(block_experts)].float(), h.float())
    target = torch.where(sorted_slots.long() < n_slots, sorted_slots.long(), n_slots)  # padding: a dropped row
    weights = torch.cat([slot_weights.float(), slot_weights.new_zeros(1, dtype=torch.float32)])
    out = rows.new_zeros(n_slots + 1, rows.shape[1])
    return out.index_copy_(0, target, rows * weights[target, None])[:n_slots]
