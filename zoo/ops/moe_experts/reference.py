"""Routing plus expert compute of a mixture-of-experts layer, in plain PyTorch with static shapes
(docs/algorithms.md §3.3): the oracle of the zoo::moe_experts implementations and its decomposition body.

Routing of token x over N experts, top-K, from router logits l = W_r x (in fp32):
- "softmax-topk": p = softmax(l) over all N; y = sum_{i in topK(p)} p_i E_i(x), no renormalisation
  (the upcycling paper's choice; Qwen2-MoE with norm_topk_prob=False);
- "topk-softmax": q = softmax over the K largest logits; y = sum_i q_i E_i(x) (Mixtral; equal to
  softmax over all, top-K, renormalise).
Experts, stacked: gated (SwiGLU-style) E_i(x) = W_down[i] (act(W_gate[i] x) * W_up[i] x) with W_gate and W_up
fused in one matrix w_gate_up[i] = [W_gate[i]; W_up[i]] (2F, d); plain E_i(x) = W_down[i] act(W_up[i] x).

The reference runs every expert on every token and weights each result by the token's routing weight (0 for
the experts it was not routed to): N/K times the work of grouped compute, but static shapes, no host sync
and no expert dropped whatever the routing.
"""

import torch
import torch.nn.functional as F

ROUTINGS = ("softmax-topk", "topk-softmax")

# names as zoo.nn.mlp spells them
ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
}


def route(router_logits: torch.Tensor, top_k: int, routing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (T, N) -> (routing weights (T, K) fp32, expert ids (T, K) int64)."""
    logits = router_logits.float()
    if routing == "softmax-topk":
        return torch.topk(logits.softmax(dim=-1), top_k, dim=-1)
    if routing == "topk-softmax":
        top_logits, experts = torch.topk(logits, top_k, dim=-1)
        return top_logits.softmax(dim=-1), experts
    raise ValueError(f"unknown routing {routing!r}; known: {', '.join(ROUTINGS)}")


def expert_hidden(h: torch.Tensor, activation: str, gated: bool) -> torch.Tensor:
    """The experts' hidden activations from the up projection h (..., 2F) gated / (..., F) plain."""
    act = ACTIVATIONS[activation]
    if gated:
        gate, up = h.chunk(2, dim=-1)
        return act(gate) * up
    return act(h)


def moe_experts_ref(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), router_logits (T, N), w_gate_up (N, 2F, d) gated or (N, F, d) plain, w_down (N, d, F)
    -> (T, d) in x's dtype, computed in fp32."""
    T, d = x.shape
    N, F_in, _ = w_gate_up.shape
    weights, experts = route(router_logits, top_k, routing)
    gates = torch.zeros(T, N, dtype=torch.float32, device=x.device).scatter(1, experts, weights)
    h = (x.float() @ w_gate_up.float().reshape(N * F_in, d).T).view(T, N, F_in)  # every expert on every token
    h = expert_hidden(h, activation, gated) * gates[:, :, None]  # (T, N, F), 0 where not routed
    # sum_i gate_i W_down[i] h_i: one contraction over (expert, hidden unit)
    return (h.reshape(T, -1) @ w_down.float().transpose(1, 2).reshape(-1, d)).to(x.dtype)
