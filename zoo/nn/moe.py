"""Mixture-of-experts feed-forward layer: routing variants, grouped expert compute and a dense mode
(SPECS 3.3).

Routing of token x over N experts, top-K (router logits l = W_r x, in fp32):
- "softmax-topk": p = softmax(l) over all N; y = sum_{i in topK(p)} p_i E_i(x), no renormalisation
  (the upcycling paper's choice; Qwen2-MoE with norm_topk_prob=False);
- "topk-softmax": q = softmax over the K largest logits; y = sum_i q_i E_i(x) (Mixtral; equal to
  softmax over all, top-K, renormalise).
Experts are SwiGLU (gated) or plain MLPs (e.g. squared ReLU), their weights stacked: w_up (N, F, d),
w_gate (N, F, d) when gated, w_down (N, d, F). An optional shared expert sees every token, optionally
scaled by sigmoid(shared_gate(x)) (Qwen2-MoE).

Compute modes give the same output:
- "grouped": token slots are sorted by expert and each expert runs on its own tokens only, then the
  results are scattered back, weighted. The work is K/N of dense; the per-expert split depends on the
  data, which graph exporters cannot express.
- "dense": every expert on every token, masked by the routing weights; static shapes, for exporters.
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.mlp import MLP, GatedMLP, activation

ROUTINGS = ("softmax-topk", "topk-softmax")
COMPUTE_MODES = ("grouped", "dense")


def route(logits: torch.Tensor, top_k: int, routing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: (T, N) -> (weights (T, K) fp32, expert ids (T, K))."""
    logits = logits.float()
    if routing == "softmax-topk":
        return torch.topk(logits.softmax(dim=-1), top_k, dim=-1)
    if routing == "topk-softmax":
        top_logits, experts = torch.topk(logits, top_k, dim=-1)
        return top_logits.softmax(dim=-1), experts
    raise ValueError(f"unknown routing {routing!r}; known: {', '.join(ROUTINGS)}")


class MoE(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        d_expert: int,
        routing: str = "softmax-topk",
        gated: bool = True,
        act: str = "silu",
        shared_d_ff: int = 0,
        shared_gate: bool = False,
    ):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"unknown routing {routing!r}; known: {', '.join(ROUTINGS)}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
        self.n_experts, self.top_k, self.routing, self.gated = n_experts, top_k, routing, gated
        self.act = activation(act)
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_expert, d_model)) if gated else None
        self.w_up = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        shared_cls = GatedMLP if gated else MLP
        self.shared = shared_cls(d_model, shared_d_ff, act=act, bias=False) if shared_d_ff else None
        self.shared_gate = nn.Linear(d_model, 1, bias=False) if shared_gate else None
        self.compute = "grouped"
        self.stats: list[torch.Tensor] | None = None  # a list: each forward appends tokens per expert

    @classmethod
    def from_config(cls, c) -> "MoE":
        return cls(
            c.d_model,
            c.n_experts,
            c.top_k,
            c.d_expert,
            c.routing,
            gated=c.expert_mlp == "gated",
            act=c.activation,
            shared_d_ff=c.shared_d_ff,
            shared_gate=c.shared_gate,
        )

    def reset_parameters(self, std: float = 0.02):
        for weight in (self.w_gate, self.w_up, self.w_down):
            if weight is not None:
                nn.init.normal_(weight, std=std)

    def expert_ffn(self, x: torch.Tensor, e: int | slice) -> torch.Tensor:
        """Expert e (or, with a slice, every expert at once: x (T, d) -> (T, N, d))."""
        if isinstance(e, int):
            h = self.act(x @ self.w_gate[e].T) * (x @ self.w_up[e].T) if self.gated else self.act(x @ self.w_up[e].T)
            return h @ self.w_down[e].T
        h = torch.einsum("td,nfd->tnf", x, self.w_up)
        h = self.act(torch.einsum("td,nfd->tnf", x, self.w_gate)) * h if self.gated else self.act(h)
        return torch.einsum("tnf,ndf->tnd", h, self.w_down)

    def grouped(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        flat = experts.flatten()  # (T*K,) the expert of every (token, slot)
        order = flat.argsort(stable=True)
        token_of = order // self.top_k  # the token each sorted slot belongs to
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        outputs = [self.expert_ffn(tokens, e) for e, tokens in enumerate(x[token_of].split(counts)) if counts[e]]
        weighted = torch.cat(outputs) * weights.flatten()[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, weighted)

    def dense(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        gates = torch.zeros(x.shape[0], self.n_experts, device=x.device).scatter(1, experts, weights)
        return torch.einsum("tnd,tn->td", self.expert_ffn(x, slice(None)), gates.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, experts = route(self.router(x), self.top_k, self.routing)
        if self.stats is not None:
            self.stats.append(torch.bincount(experts.flatten(), minlength=self.n_experts))
        y = (self.grouped if self.compute == "grouped" else self.dense)(x, weights, experts)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = F.sigmoid(self.shared_gate(x)) * shared
            y = y + shared
        return y.view(shape)


def set_moe_compute(model: nn.Module, mode: str) -> None:
    """Select "grouped" or "dense" expert compute for every MoE layer of `model`."""
    if mode not in COMPUTE_MODES:
        raise ValueError(f"unknown MoE compute mode {mode!r}; known: {', '.join(COMPUTE_MODES)}")
    for module in model.modules():
        if isinstance(module, MoE):
            module.compute = mode


@torch.no_grad()
def router_stats(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Tokens routed to each expert, per MoE layer, over one forward of input_ids: (moe layers, N)."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    for layer in layers:
        layer.stats = []
    try:
        model(input_ids)
        return torch.stack([torch.stack(layer.stats).sum(0) for layer in layers])
    finally:
        for layer in layers:
            layer.stats = None
