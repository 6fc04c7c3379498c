"""zoo::moe_experts: MoE routing plus grouped expert compute (docs/algorithms.md §3.3)."""

from zoo.ops.moe_experts.op import moe_experts
from zoo.ops.moe_experts.reference import ACTIVATIONS, ROUTINGS, moe_experts_ref, route

__all__ = ["ACTIVATIONS", "ROUTINGS", "moe_experts", "moe_experts_ref", "route"]
