"""zoo::moe_schedule, zoo::moe_grouped_gate_up and zoo::moe_grouped_down: zoo::moe_experts' grouped GPU path
as three single-launch ops (its routing and block schedule, then its two grouped-GEMM kernels), the form
TensorRT's ahead-of-time plugins take for a prefill (export/tensorrt.py)."""

from zoo.ops.moe_grouped.op import moe_grouped_down, moe_grouped_gate_up, moe_schedule
from zoo.ops.moe_grouped.reference import (
    BLOCK_M,
    block_schedule,
    moe_grouped_down_ref,
    moe_grouped_gate_up_ref,
    moe_schedule_ref,
)

__all__ = [
    "BLOCK_M",
    "block_schedule",
    "moe_grouped_down",
    "moe_grouped_down_ref",
    "moe_grouped_gate_up",
    "moe_grouped_gate_up_ref",
    "moe_schedule",
    "moe_schedule_ref",
]
