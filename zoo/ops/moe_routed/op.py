"""zoo::moe_routed_gate_up and zoo::moe_routed_down: zoo::moe_experts as two ops that each route the token
from its router logits, joined by the hidden activations h (T, K, F) (reference.py). Their Triton kernels
are one launch each, with no block schedule: a program per routed slot (gate/up) or per token (down)
streams the weights of the slot's expert, which suits decode's few tokens; TensorRT's ahead-of-time
plugins take them."""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.moe_experts.reference import ACTIVATIONS, ROUTINGS
from zoo.ops.moe_routed.cpu import moe_routed_down_cpu, moe_routed_gate_up_cpu
from zoo.ops.moe_routed.reference import moe_routed_down_ref, moe_routed_gate_up_ref
from zoo.ops.moe_routed.shapes import down_output_specs, gate_up_output_specs


def check_routing(top_k: int, n_experts: int, routing: str, router_logits, tokens) -> None:
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; known: {', '.join(ROUTINGS)}")
    if router_logits.dim() != 2 or tuple(router_logits.shape) != (tokens, n_experts):
        raise ValueError(
            f"router_logits has shape {tuple(router_logits.shape)}, not (tokens, n_experts) = ({tokens}, {n_experts})"
        )


def check_gate_up(x, router_logits, w_gate_up, top_k: int, routing: str, activation: str, gated: bool):
    if w_gate_up.dim() != 3 or (gated and w_gate_up.shape[1] % 2):
        raise ValueError(f"w_gate_up has shape {tuple(w_gate_up.shape)}, not (N, 2F, d) gated or (N, F, d) plain")
    if x.dim() != 2 or x.shape[1] != w_gate_up.shape[2]:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; w_gate_up {tuple(w_gate_up.shape)} needs (T, {w_gate_up.shape[2]})"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    check_routing(top_k, w_gate_up.shape[0], routing, router_logits, x.shape[0])


def check_down(h, router_logits, w_down, top_k: int, routing: str):
    if h.dim() != 3 or w_down.dim() != 3 or h.shape[1] != top_k or h.shape[2] != w_down.shape[2]:
        raise ValueError(f"h {tuple(h.shape)} is not (T, top_k={top_k}, F) for w_down {tuple(w_down.shape)} (N, d, F)")
    check_routing(top_k, w_down.shape[0], routing, router_logits, h.shape[0])


def _gate_up_triton():
    from zoo.ops.moe_routed.triton_kernel import moe_routed_gate_up_triton

    return moe_routed_gate_up_triton


def _down_triton():
    from zoo.ops.moe_routed.triton_kernel import moe_routed_down_triton

    return moe_routed_down_triton


@torch.library.custom_op("zoo::moe_routed_gate_up", mutates_args=())
def moe_routed_gate_up(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), router_logits (T, N), w_gate_up (N, 2F, d) [gate rows; up rows] gated or (N, F, d) plain ->
    h (T, K, F) in x's dtype: slot (t, k) holds act(W_gate x_t) * (W_up x_t) (or act(W_up x_t)) of token t's
    k-th expert under `routing` ("softmax-topk" | "topk-softmax", fp32, as zoo::moe_experts routes)."""
    check_gate_up(x, router_logits, w_gate_up, top_k, routing, activation, gated)
    impl = dispatch("moe_routed_gate_up", x.device, reference=moe_routed_gate_up_ref, cpu=moe_routed_gate_up_cpu,
                    triton=_gate_up_triton)  # fmt: skip
    return impl(x, router_logits, w_gate_up, top_k, routing, activation, gated)


@moe_routed_gate_up.register_fake
def _(x, router_logits, w_gate_up, top_k, routing, activation, gated):
    check_gate_up(x, router_logits, w_gate_up, top_k, routing, activation, gated)
    tensors = (x, router_logits, w_gate_up)
    attrs = dict(top_k=top_k, routing=routing, activation=activation, gated=gated)
    ((shape, dtype),) = gate_up_output_specs([t.shape for t in tensors], [t.dtype for t in tensors], **attrs)
    return x.new_empty(shape, dtype=dtype)


@torch.library.custom_op("zoo::moe_routed_down", mutates_args=())
def moe_routed_down(
    h: torch.Tensor, router_logits: torch.Tensor, w_down: torch.Tensor, top_k: int, routing: str
) -> torch.Tensor:
    """h (T, K, F) from zoo::moe_routed_gate_up, router_logits (T, N), w_down (N, d, F) -> y (T, d) in h's
    dtype = sum over k of token t's k-th routing weight times W_down[e_tk] h_tk (fp32 accumulation)."""
    check_down(h, router_logits, w_down, top_k, routing)
    impl = dispatch("moe_routed_down", h.device, reference=moe_routed_down_ref, cpu=moe_routed_down_cpu,
                    triton=_down_triton)  # fmt: skip
    return impl(h, router_logits, w_down, top_k, routing)


@moe_routed_down.register_fake
def _(h, router_logits, w_down, top_k, routing):
    check_down(h, router_logits, w_down, top_k, routing)
    tensors = (h, router_logits, w_down)
    ((shape, dtype),) = down_output_specs([t.shape for t in tensors], [t.dtype for t in tensors], top_k, routing)
    return h.new_empty(shape, dtype=dtype)
