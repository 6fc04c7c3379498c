"""zoo::moe_experts: routing (fp32) plus expert compute of a mixture-of-experts layer as one op whose output
shape (tokens, d_model) does not depend on the routing, so a captured graph holds one node per MoE layer
and no exporter sees (or drops) the per-expert split. The router matmul stays outside, a plain linear."""

import torch

from zoo.ops.autograd import register_reference_autograd
from zoo.ops.kernels import dispatch
from zoo.ops.moe_experts.cpu import moe_experts_cpu
from zoo.ops.moe_experts.reference import ACTIVATIONS, ROUTINGS, moe_experts_ref
from zoo.ops.moe_experts.shapes import output_specs


def check_experts(x, w_gate_up, w_down, top_k: int, routing: str, activation: str, gated: bool):
    """The checks every MoE op shares: x (T, d) against the expert weights, top_k, routing, activation."""
    if x.dim() != 2 or w_gate_up.dim() != 3 or w_down.dim() != 3:
        raise ValueError("an MoE op takes x (T, d), w_gate_up (N, 2F|F, d), w_down (N, d, F)")
    n_experts, d_model, d_expert = w_down.shape
    expected_in = (n_experts, 2 * d_expert if gated else d_expert, d_model)
    if tuple(w_gate_up.shape) != expected_in:
        raise ValueError(
            f"w_gate_up has shape {tuple(w_gate_up.shape)}; w_down {tuple(w_down.shape)} needs {expected_in}"
        )
    if x.shape[1] != d_model:
        raise ValueError(f"x has shape {tuple(x.shape)}; the experts need d_model={d_model}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; known: {', '.join(ROUTINGS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")


def check_arguments(x, router_logits, w_gate_up, w_down, top_k: int, routing: str, activation: str, gated: bool):
    check_experts(x, w_gate_up, w_down, top_k, routing, activation, gated)
    if router_logits.dim() != 2 or router_logits.shape != (x.shape[0], w_down.shape[0]):
        raise ValueError(f"x {tuple(x.shape)} / router_logits {tuple(router_logits.shape)} do not match the experts")


def _triton_launcher():
    from zoo.ops.moe_experts.triton_kernel import moe_experts_triton

    return moe_experts_triton


@torch.library.custom_op("zoo::moe_experts", mutates_args=())
def moe_experts(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), router_logits (T, N), w_gate_up (N, 2F, d) [gate rows; up rows] when gated or the up matrix
    (N, F, d) when plain, w_down (N, d, F) -> y (T, d) = sum over each token's top-K experts of routing
    weight x expert output (routing "softmax-topk" | "topk-softmax", in fp32)."""
    check_arguments(x, router_logits, w_gate_up, w_down, top_k, routing, activation, gated)
    impl = dispatch("moe_experts", x.device, reference=moe_experts_ref, cpu=moe_experts_cpu, triton=_triton_launcher)
    return impl(x, router_logits, w_gate_up, w_down, top_k, routing, activation, gated)


@moe_experts.register_fake
def _(x, router_logits, w_gate_up, w_down, top_k, routing, activation, gated):
    check_arguments(x, router_logits, w_gate_up, w_down, top_k, routing, activation, gated)
    tensors = (x, router_logits, w_gate_up, w_down)
    attrs = dict(top_k=top_k, routing=routing, activation=activation, gated=gated)
    ((shape, dtype),) = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], **attrs)
    return x.new_empty(shape, dtype=dtype)


register_reference_autograd(moe_experts, moe_experts_ref, n_tensors=4)
