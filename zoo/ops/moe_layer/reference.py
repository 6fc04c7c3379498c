"""The router matmul followed by zoo::moe_experts' routing and expert compute (docs/algorithms.md §3.3), in
plain PyTorch with static shapes: the oracle of the zoo::moe_layer implementations and its decomposition body.

The router logits are x @ router_weight^T in x's dtype, exactly as the unfused graph's F.linear computes
them; the routing then upcasts them to fp32 (zoo.ops.moe_experts.reference.route)."""

import torch
import torch.nn.functional as F

from zoo.ops.moe_experts import reference as experts


def moe_layer_ref(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), router_weight (N, d), w_gate_up (N, 2F, d) gated or (N, F, d) plain, w_down (N, d, F)
    -> (T, d) in x's dtype."""
    router_logits = F.linear(x, router_weight)
    return experts.moe_experts_ref(x, router_logits, w_gate_up, w_down, top_k, routing, activation, gated)
