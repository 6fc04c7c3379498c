"""zoo::moe_experts split at its hidden activations (docs/algorithms.md §3.3), in plain PyTorch: the oracle of
the two routed ops. Each op routes the token itself from the router logits (the same fp32 routing as
zoo::moe_experts, zoo.ops.moe_experts.reference.route), so nothing but the hidden activations passes
between them:
    h = moe_routed_gate_up(x, router_logits, w_gate_up, ...)    (T, K, F): slot (t, k) is expert_hidden of
                                                                 token t under its k-th expert, in x's dtype
    y = moe_routed_down(h, router_logits, w_down, ...)          (T, d) = sum_k weight_tk W_down[e_tk] h_tk
y equals zoo::moe_experts(x, router_logits, ...) up to the rounding of h to x's dtype, which its grouped
Triton implementation also stores h in."""

import torch

from zoo.ops.moe_experts.reference import expert_hidden, route


def moe_routed_gate_up_ref(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), router_logits (T, N), w_gate_up (N, 2F, d) gated or (N, F, d) plain -> h (T, K, F) in x's
    dtype, computed in fp32."""
    _, experts = route(router_logits, top_k, routing)
    projections = torch.einsum("tkfd,td->tkf", w_gate_up[experts].float(), x.float())
    return expert_hidden(projections, activation, gated).to(x.dtype)


def moe_routed_down_ref(
    h: torch.Tensor, router_logits: torch.Tensor, w_down: torch.Tensor, top_k: int, routing: str
) -> torch.Tensor:
    """h (T, K, F), router_logits (T, N), w_down (N, d, F) -> y (T, d) in h's dtype, computed in fp32."""
    weights, experts = route(router_logits, top_k, routing)
    return torch.einsum("tkdf,tkf,tk->td", w_down[experts].float(), h.float(), weights).to(h.dtype)
