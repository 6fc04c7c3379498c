"""CPU implementation of zoo::moe_layer: the router as one F.linear, then zoo::moe_experts' grouped CPU
implementation. On CPU the fused op gains one graph node, not speed: the router matmul (N x d per token) is
a small part of the layer, and folding it into the routing would not remove any pass over memory that
matters next to the experts' weights."""

import torch
import torch.nn.functional as F

from zoo.ops.moe_experts.cpu import moe_experts_cpu


def moe_layer_cpu(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    return moe_experts_cpu(x, F.linear(x, router_weight), w_gate_up, w_down, top_k, routing, activation, gated)
