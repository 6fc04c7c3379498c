"""zoo::moe_schedule, zoo::moe_grouped_gate_up and zoo::moe_grouped_down: zoo::moe_experts' grouped GPU path
split into its launches (reference.py has the equations). Their Triton implementations are one kernel
each: the schedule one program that routes every token, counts the slots per expert and scatters the slot
ids; the two others zoo::moe_experts' own grouped-GEMM kernels (zoo/ops/moe_experts/triton_kernel.py)."""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.moe_experts.reference import ACTIVATIONS
from zoo.ops.moe_grouped.cpu import moe_grouped_down_cpu, moe_grouped_gate_up_cpu, moe_schedule_cpu
from zoo.ops.moe_grouped.reference import (
    BLOCK_M,
    moe_grouped_down_ref,
    moe_grouped_gate_up_ref,
    moe_schedule_ref,
)
from zoo.ops.moe_grouped.shapes import down_output_specs, gate_up_output_specs, schedule_output_specs
from zoo.ops.moe_routed.op import check_routing


def check_schedule(sorted_slots, block_experts) -> None:
    if sorted_slots.dim() != 1 or block_experts.dim() != 1 or sorted_slots.shape[0] != block_experts.shape[0] * BLOCK_M:
        shapes = f"sorted_slots {tuple(sorted_slots.shape)} / block_experts {tuple(block_experts.shape)}"
        raise ValueError(f"{shapes} are not (blocks * {BLOCK_M},) / (blocks,): a zoo::moe_schedule's")
    if sorted_slots.dtype != torch.int32 or block_experts.dtype != torch.int32:
        raise ValueError("sorted_slots and block_experts are int32 (zoo::moe_schedule's outputs)")


def check_gate_up(x, w_gate_up, sorted_slots, block_experts, activation: str, gated: bool) -> None:
    if w_gate_up.dim() != 3 or (gated and w_gate_up.shape[1] % 2) or x.dim() != 2 or x.shape[1] != w_gate_up.shape[2]:
        raise ValueError(f"x {tuple(x.shape)} / w_gate_up {tuple(w_gate_up.shape)} are not (T, d) / (N, 2F|F, d)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    check_schedule(sorted_slots, block_experts)


def check_down(h, w_down, sorted_slots, block_experts, slot_weights) -> None:
    if h.dim() != 2 or w_down.dim() != 3 or h.shape[1] != w_down.shape[2] or h.shape[0] != sorted_slots.shape[0]:
        raise ValueError(
            f"h {tuple(h.shape)} is not (rows of the schedule, F) for w_down {tuple(w_down.shape)} (N, d, F)"
        )
    if slot_weights.dim() != 1 or slot_weights.dtype != torch.float32:
        raise ValueError(f"slot_weights {tuple(slot_weights.shape)} {slot_weights.dtype} is not (T*K,) float32")
    check_schedule(sorted_slots, block_experts)


def _schedule_triton():
    from zoo.ops.moe_grouped.triton_kernel import moe_schedule_triton

    return moe_schedule_triton


def _gate_up_triton():
    from zoo.ops.moe_experts.triton_kernel import moe_grouped_gate_up_triton

    return moe_grouped_gate_up_triton


def _down_triton():
    from zoo.ops.moe_experts.triton_kernel import moe_grouped_down_triton

    return moe_grouped_down_triton


@torch.library.custom_op("zoo::moe_schedule", mutates_args=())
def moe_schedule(
    router_logits: torch.Tensor, top_k: int, routing: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """router_logits (T, N) -> (slot_weights (T*K,) fp32, slot_experts (T*K,) int32, sorted_slots (R,) int32,
    block_experts (B,) int32): the routing ("softmax-topk" | "topk-softmax", fp32) and the block schedule
    of the grouped kernels (reference.py)."""
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits has shape {tuple(router_logits.shape)}, not (tokens, n_experts)")
    check_routing(top_k, router_logits.shape[1], routing, router_logits, router_logits.shape[0])
    impl = dispatch("moe_schedule", router_logits.device, reference=moe_schedule_ref, cpu=moe_schedule_cpu,
                    triton=_schedule_triton)  # fmt: skip
    return impl(router_logits, top_k, routing)


@moe_schedule.register_fake
def _(router_logits, top_k, routing):
    specs = schedule_output_specs([router_logits.shape], [router_logits.dtype], top_k, routing)
    return tuple(router_logits.new_empty(shape, dtype=dtype) for shape, dtype in specs)


@torch.library.custom_op("zoo::moe_grouped_gate_up", mutates_args=())
def moe_grouped_gate_up(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    sorted_slots: torch.Tensor,
    block_experts: torch.Tensor,
    top_k: int,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), w_gate_up (N, 2F, d) [gate rows; up rows] gated or (N, F, d) plain, a zoo::moe_schedule's
    sorted_slots and block_experts -> h (R, F) in x's dtype, a row per schedule row (padding rows 0)."""
    check_gate_up(x, w_gate_up, sorted_slots, block_experts, activation, gated)
    impl = dispatch("moe_grouped_gate_up", x.device, reference=moe_grouped_gate_up_ref, cpu=moe_grouped_gate_up_cpu,
                    triton=_gate_up_triton)  # fmt: skip
    return impl(x, w_gate_up, sorted_slots, block_experts, top_k, activation, gated)


@moe_grouped_gate_up.register_fake
def _(x, w_gate_up, sorted_slots, block_experts, top_k, activation, gated):
    check_gate_up(x, w_gate_up, sorted_slots, block_experts, activation, gated)
    tensors = (x, w_gate_up, sorted_slots, block_experts)
    ((shape, dtype),) = gate_up_output_specs([t.shape for t in tensors], [t.dtype for t in tensors], top_k,
                                             activation, gated)  # fmt: skip
    return x.new_empty(shape, dtype=dtype)


@torch.library.custom_op("zoo::moe_grouped_down", mutates_args=())
def moe_grouped_down(
    h: torch.Tensor,
    w_down: torch.Tensor,
    sorted_slots: torch.Tensor,
    block_experts: torch.Tensor,
    slot_weights: torch.Tensor,
) -> torch.Tensor:
    """h (R, F) from zoo::moe_grouped_gate_up, w_down (N, d, F), the schedule and slot_weights (T*K,) fp32 ->
    out (T*K, d) fp32: each slot's routing weight times its expert's W_down h, one row per slot."""
    check_down(h, w_down, sorted_slots, block_experts, slot_weights)
    impl = dispatch("moe_grouped_down", h.device, reference=moe_grouped_down_ref, cpu=moe_grouped_down_cpu,
                    triton=_down_triton)  # fmt: skip
    return impl(h, w_down, sorted_slots, block_experts, slot_weights)


@moe_grouped_down.register_fake
def _(h, w_down, sorted_slots, block_experts, slot_weights):
    check_down(h, w_down, sorted_slots, block_experts, slot_weights)
    tensors = (h, w_down, sorted_slots, block_experts, slot_weights)
    ((shape, dtype),) = down_output_specs([t.shape for t in tensors], [t.dtype for t in tensors])
    return h.new_empty(shape, dtype=dtype)
