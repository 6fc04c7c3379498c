"""zoo::moe_routed_gate_up and zoo::moe_routed_down: an MoE layer's expert compute as two single-launch ops
over each token's routed slots, the form TensorRT's ahead-of-time plugins take (export/tensorrt.py writes
every zoo::moe_experts / zoo::moe_layer node of a TensorRT-ready graph as these two)."""

from zoo.ops.moe_routed.op import moe_routed_down, moe_routed_gate_up
from zoo.ops.moe_routed.reference import moe_routed_down_ref, moe_routed_gate_up_ref

__all__ = ["moe_routed_down", "moe_routed_down_ref", "moe_routed_gate_up", "moe_routed_gate_up_ref"]
