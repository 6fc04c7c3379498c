"""Mixture-of-experts feed-forward layer (docs/algorithms.md §3.3): a router (a plain linear), then routing
plus expert compute in one op, zoo::moe_experts (zoo/ops/moe_experts: the routing equations, the reference
and the grouped kernels), and an optional shared expert outside it.

Experts are SwiGLU-style (gated) or plain MLPs (e.g. squared ReLU), their weights stacked: gated experts hold
the gate and up matrices fused, w_gate_up (N, 2F, d) = [gate rows; up rows] per expert (as HF Mixtral's
gate_up_proj); plain experts hold w_up (N, F, d); both hold w_down (N, d, F). The shared expert sees every
token, optionally scaled by sigmoid(shared_gate(x)) (Qwen2-MoE).

How the experts run is the op's kernel choice (zoo.ops.kernel_choice): "reference" runs every expert on every
token, masked by the routing weights (static shapes); "cpu" and "triton" run each expert on its own tokens.
The layer holds no mode or statistics state, so a captured graph has one zoo.moe_experts node per layer.
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.mlp import MLP, GatedMLP, activation
from zoo.ops.moe_experts import ROUTINGS, moe_experts, route


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
        activation(act)  # a clear error for an unknown name
        self.n_experts, self.top_k, self.routing, self.gated, self.act_name = n_experts, top_k, routing, gated, act
        self.router = nn.Linear(d_model, n_experts, bias=False)
        if gated:
            self.w_gate_up = nn.Parameter(torch.empty(n_experts, 2 * d_expert, d_model))
        else:
            self.w_up = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        shared_cls = GatedMLP if gated else MLP
        self.shared = shared_cls(d_model, shared_d_ff, act=act, bias=False) if shared_d_ff else None
        self.shared_gate = nn.Linear(d_model, 1, bias=False) if shared_gate else None

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

    @property
    def w_in(self) -> torch.Tensor:
        """The experts' input projection: w_gate_up (N, 2F, d) when gated, w_up (N, F, d) when plain."""
        return self.w_gate_up if self.gated else self.w_up

    def reset_parameters(self, std: float = 0.02):
        for weight in (self.w_in, self.w_down):
            nn.init.normal_(weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = moe_experts(x, self.router(x), self.w_in, self.w_down, self.top_k, self.routing, self.act_name, self.gated)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = F.sigmoid(self.shared_gate(x)) * shared
            y = y + shared
        return y.view(shape)


@torch.no_grad()
def router_stats(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Tokens routed to each expert, per MoE layer, over one forward of `inputs` (token ids for a model, or
    activations for an MoE layer itself): (MoE layers, N). Temporary forward hooks on the routers record
    the router logits; the routing is recomputed from them, so the layers keep no state."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    counts = [torch.zeros(layer.n_experts, dtype=torch.int64) for layer in layers]

    def recorder(i: int, layer: MoE):
        def record(router, args, logits):
            _, experts = route(logits.reshape(-1, layer.n_experts), layer.top_k, layer.routing)
            counts[i] += torch.bincount(experts.flatten(), minlength=layer.n_experts).cpu()

        return record

    hooks = [layer.router.register_forward_hook(recorder(i, layer)) for i, layer in enumerate(layers)]
    try:
        model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(counts)
