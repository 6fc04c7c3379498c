"""Output shapes and dtypes of the grouped MoE ops from their input shapes and dtypes (plain arithmetic on
sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernels and the TensorRT
plugins both use them."""

import torch

from zoo.ops.moe_grouped.reference import BLOCK_M, schedule_blocks


def schedule_output_specs(shapes, dtypes, top_k, routing):
    """(router_logits (T, N),) -> [slot_weights (T*K,) fp32, slot_experts (T*K,) int32, sorted_slots
    (B * BLOCK_M,) int32, block_experts (B,) int32], B = cdiv(T*K, BLOCK_M) + N."""
    tokens, n_experts = shapes[0]
    n_slots = tokens * top_k
    blocks = schedule_blocks(n_slots, n_experts)
    return [((n_slots,), torch.float32), ((n_slots,), torch.int32), ((blocks * BLOCK_M,), torch.int32),
            ((blocks,), torch.int32)]  # fmt: skip


def gate_up_output_specs(shapes, dtypes, top_k, activation, gated):
    """(x, w_gate_up (N, 2F|F, d), sorted_slots (R,), block_experts) -> [h (R, F) in x's dtype]."""
    d_expert = shapes[1][1] // 2 if gated else shapes[1][1]
    return [((shapes[2][0], d_expert), dtypes[0])]


def down_output_specs(shapes, dtypes):
    """(h, w_down (N, d, F), sorted_slots, block_experts, slot_weights (T*K,)) -> [out (T*K, d) fp32]."""
    return [((shapes[4][0], shapes[1][1]), torch.float32)]
