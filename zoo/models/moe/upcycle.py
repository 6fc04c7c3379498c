"""Upcycling a dense Llama-family model into an MoE (He et al. 2024; docs/algorithms.md §3.2).

Expert j = e * G + g (e < E = N / G copies, g < G shards) holds shard g of the dense FFN: rows
[g F/G, (g+1) F/G) of the gate and up matrices and the same columns of the down matrix, times s.
Router row j is row e of a fresh random router, so the G shards of a copy always score alike.
Scale S = E G^2 / K for softmax-then-top-K and S = G for top-K-then-softmax, applied as s = S^(1/3) to
each matrix when the expert is cubic in its weights (SwiGLU, squared ReLU) and s = S^(1/2) otherwise.
With top-K-then-softmax, K a multiple of G and the MoE equals the dense model exactly for G = 1 (any
activation) and for squared ReLU (any G); otherwise it is close at initialisation only.
"""

import torch

from zoo.errors import ZooError
from zoo.models.moe.config import MoEConfig
from zoo.nn.transformer import DecoderConfig


def scale_factor(n_experts: int, granularity: int, top_k: int, routing: str, cubic: bool) -> float:
    expansion = n_experts // granularity
    S = expansion * granularity**2 / top_k if routing == "softmax-topk" else granularity
    return S ** (1 / 3) if cubic else S**0.5


def upcycled_config(dense: DecoderConfig, n_experts: int, granularity: int, top_k: int, routing: str) -> MoEConfig:
    if dense.family != "llama":
        raise ZooError(f"upcycling takes a llama-family dense model, not {dense.family!r}")
    if dense.mlp_bias:
        raise ZooError("the dense MLP has biases, which the MoE experts do not carry")
    if n_experts % granularity or dense.d_ff % granularity:
        raise ZooError(f"granularity {granularity} must divide the experts ({n_experts}) and d_ff ({dense.d_ff})")
    if not 1 <= top_k <= n_experts:
        raise ZooError(f"top_k={top_k} must be in [1, {n_experts}]")
    values = {**dense.to_dict(), "mlp": "moe"}
    return MoEConfig(
        **values,
        n_experts=n_experts,
        top_k=top_k,
        d_expert=dense.d_ff // granularity,
        routing=routing,
        expert_mlp=dense.mlp,
    )


@torch.no_grad()
def upcycle(dense_model, n_experts: int, granularity: int, top_k: int, routing: str = "softmax-topk", seed: int = 0):
    """The MoE model upcycled from `dense_model` (a llama-family DecoderLM); the router is drawn from `seed`."""
    from zoo.registry import build_from_config

    dense = dense_model.config
    config = upcycled_config(dense, n_experts, granularity, top_k, routing)
    moe_model = build_from_config(config, seed=seed, dtype=next(dense_model.parameters()).dtype)
    dense_state = dense_model.state_dict()
    moe_state = moe_model.state_dict()
    for key in moe_state:
        if ".mlp." not in key:
            moe_state[key].copy_(dense_state[key])  # attention, norms, embeddings: unchanged
    cubic = dense.mlp == "gated" or dense.activation == "relu2"
    s = scale_factor(n_experts, granularity, top_k, routing, cubic)
    expansion, width = n_experts // granularity, dense.d_ff // granularity
    for layer, (dense_layer, moe_layer) in enumerate(zip(dense_model.layers, moe_model.layers)):
        mlp, moe = dense_layer.mlp, moe_layer.mlp
        for e in range(expansion):
            for g in range(granularity):
                j, rows = e * granularity + g, slice(g * width, (g + 1) * width)
                up = mlp.w_up.weight[rows]
                # gated experts: the gate and up shards side by side in the fused w_gate_up
                moe.w_in[j] = s * (torch.cat([mlp.w_gate.weight[rows], up]) if moe.gated else up)
                moe.w_down[j] = s * mlp.w_down.weight[:, rows]
        # every shard of copy e gets router row e
        moe.router.weight.copy_(moe.router.weight[:expansion].repeat_interleave(granularity, dim=0))
    return moe_model
