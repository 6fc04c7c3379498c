"""Grouped CPU implementation of zoo::moe_experts: token slots sorted by expert, each expert run on its own
tokens only (K/N of the reference's work), experts that got no token skipped (their weights are not read).

Per expert: gather its tokens, one matmul with the fused [gate; up] matrix, the activation in place, one
matmul with w_down, the routing weights (fp32) applied in place, and an index_add into the fp32 output.
This is one Python iteration per expert that has tokens, on purpose: each expert's tokens, hidden
activations and outputs stay in cache between its two matmuls. The loop-free alternatives (one batched
matmul over groups padded to the largest, or torch._grouped_mm over the sorted slots) materialise every
intermediate for all experts at once and ran slower on CPU at decode and prefill sizes.
Reading the group sizes on the host is no device sync here (CPU tensors); the Triton implementation builds
its schedule on the device instead.
Without autograd, fp32 experts run through oneDNN on weights packed once per expert (zoo/ops/onednn.py),
which at 2048 tokens took the layer from the aten matmul bound to below it (docs/architecture.md).
"""

from functools import partial

import torch
import torch.nn.functional as F

from zoo.ops import onednn
from zoo.ops.moe_experts.reference import ACTIVATIONS, route

IN_PLACE_ACTIVATIONS = {
    "silu": lambda t: F.silu(t, inplace=True),
    "relu": F.relu_,
    "relu2": lambda t: F.relu_(t).square_(),
}


def hidden_in_place(h: torch.Tensor, activation: str, gated: bool) -> torch.Tensor:
    """act(gate) * up (gated) or act(h) (plain), overwriting the up projection h (..., 2F) / (..., F)."""
    act = IN_PLACE_ACTIVATIONS.get(activation, ACTIVATIONS[activation])
    if gated:
        gate, up = h.chunk(2, dim=-1)
        return act(gate).mul_(up)
    return act(h)


def moe_experts_cpu(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    T, d = x.shape
    weights, experts = route(router_logits, top_k, routing)
    flat = experts.flatten()  # the expert of every (token, k) slot
    order = flat.argsort(stable=True)  # slots sorted by expert
    tokens_sorted = order // top_k
    weights_sorted = weights.flatten()[order, None]  # fp32
    counts = torch.bincount(flat, minlength=w_gate_up.shape[0]).tolist()  # host read: no device sync on CPU
    y = torch.zeros(T, d, dtype=torch.float32, device=x.device)  # summed over each token's K slots in fp32
    # per expert: its tokens, their routing weights, and the products with its two matrices
    groups = zip(tokens_sorted.split(counts), weights_sorted.split(counts), *expert_products(w_gate_up, w_down))
    for tokens, token_weights, project_in, project_out in groups:
        if tokens.numel():
            hidden = hidden_in_place(project_in(x.index_select(0, tokens)), activation, gated)
            y.index_add_(0, tokens, project_out(hidden).float().mul_(token_weights))
    return y.to(x.dtype)


def expert_products(w_gate_up: torch.Tensor, w_down: torch.Tensor) -> tuple[list, list]:
    """Per expert, h -> h @ w_gate_up[e]^T and h -> h @ w_down[e]^T: oneDNN on packed weights where it can
    read them, else aten's matmul on the transposed views."""
    matrices = (w_gate_up, w_down)
    if all(onednn.packable(m) for m in matrices):
        return tuple([partial(onednn.linear, packed=w) for w in onednn.packed_experts(m)] for m in matrices)
    return tuple([partial(torch.mm, mat2=w) for w in m.mT] for m in matrices)
