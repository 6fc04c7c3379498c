"""zoo::moe_layer: the router matmul, routing and grouped expert compute of an MoE layer in one region op
(docs/algorithms.md §3.3)."""

from zoo.ops.moe_layer.op import moe_layer
from zoo.ops.moe_layer.reference import moe_layer_ref

__all__ = ["moe_layer", "moe_layer_ref"]
