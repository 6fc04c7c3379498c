"""zoo::moe_layer: an MoE layer's router matmul, routing (fp32) and expert compute as one op, the region
that region growth makes of a router linear feeding zoo::moe_experts. Its output shape (tokens, d_model)
does not depend on the routing; the Triton implementation computes the router logits, the softmax and the
top-K in one kernel, so the logits never go to memory."""

import torch

from zoo.ops.autograd import register_reference_autograd
from zoo.ops.kernels import dispatch
from zoo.ops.moe_experts.op import check_experts
from zoo.ops.moe_layer.cpu import moe_layer_cpu
from zoo.ops.moe_layer.reference import moe_layer_ref
from zoo.ops.moe_layer.shapes import output_specs


def check_arguments(x, router_weight, w_gate_up, w_down, top_k: int, routing: str, activation: str, gated: bool):
    check_experts(x, w_gate_up, w_down, top_k, routing, activation, gated)
    n_experts, d_model = w_down.shape[:2]
    if router_weight.dim() != 2 or tuple(router_weight.shape) != (n_experts, d_model):
        raise ValueError(
            f"router_weight has shape {tuple(router_weight.shape)}; the experts need (n_experts, d_model) = "
            f"({n_experts}, {d_model})"
        )
    if router_weight.dtype != x.dtype:
        raise ValueError(f"router_weight is {router_weight.dtype}, x is {x.dtype}: the router runs in x's dtype")


def _triton_launcher():
    from zoo.ops.moe_layer.triton_kernel import moe_layer_triton

    return moe_layer_triton


@torch.library.custom_op("zoo::moe_layer", mutates_args=())
def moe_layer(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    routing: str,
    activation: str,
    gated: bool,
) -> torch.Tensor:
    """x (T, d), router_weight (N, d) (nn.Linear layout, no bias), w_gate_up (N, 2F, d) [gate rows; up rows]
    when gated or the up matrix (N, F, d) when plain, w_down (N, d, F) -> y (T, d) = zoo::moe_experts(x,
    x @ router_weight^T, ...): the router logits in x's dtype, the routing ("softmax-topk" | "topk-softmax")
    in fp32."""
    check_arguments(x, router_weight, w_gate_up, w_down, top_k, routing, activation, gated)
    impl = dispatch("moe_layer", x.device, reference=moe_layer_ref, cpu=moe_layer_cpu, triton=_triton_launcher)
    return impl(x, router_weight, w_gate_up, w_down, top_k, routing, activation, gated)


@moe_layer.register_fake
def _(x, router_weight, w_gate_up, w_down, top_k, routing, activation, gated):
    check_arguments(x, router_weight, w_gate_up, w_down, top_k, routing, activation, gated)
    tensors = (x, router_weight, w_gate_up, w_down)
    attrs = dict(top_k=top_k, routing=routing, activation=activation, gated=gated)
    ((shape, dtype),) = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], **attrs)
    return x.new_empty(shape, dtype=dtype)


register_reference_autograd(moe_layer, moe_layer_ref, n_tensors=4)  # the router learns through the routing
