"""zoo::moe_layer: the router matmul folded into zoo::moe_experts. The CPU implementation and the Triton
implementation (interpreter) against the reference per dtype, the fused routing kernel against
zoo.ops.moe_experts.route on the same logits, the op against F.linear + zoo::moe_experts, export with
dynamic tokens and decomposition to the reference, clear errors, and sm_90 compilation of the kernel."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.ops.moe_experts import moe_experts, route
from zoo.ops.moe_layer import moe_layer, moe_layer_ref
from zoo.ops.moe_layer.triton_kernel import moe_routing_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROUTINGS = ["softmax-topk", "topk-softmax"]
LOGIT_GAP = 0.05  # above a bf16 rounding step (0.03) of logits below 8


def make_inputs(tokens, n_experts=6, d_model=40, d_expert=24, gated=True, dtype=torch.float32, seed=0, top_k=3):
    """Inputs at awkward sizes whose top_k + 1 largest router logits are at least LOGIT_GAP apart within each
    token, so that the top-K experts and their order (for any K <= top_k) cannot depend on rounding (random
    draws; near-tied tokens are dropped)."""
    g = torch.Generator().manual_seed(seed)
    router_weight = (2 * torch.randn(n_experts, d_model, generator=g) / d_model**0.5).to(dtype)  # logits ~ N(0, 4)
    candidates = torch.randn(32 * tokens + 32, d_model, generator=g).to(dtype)
    logits = F.linear(candidates.float(), router_weight.float())
    largest = logits.topk(min(top_k + 1, n_experts), dim=-1).values
    separated = (-largest.diff(dim=-1) > LOGIT_GAP).all(dim=-1)
    x = candidates[separated][:tokens]
    assert x.shape[0] == tokens, "too few well-separated tokens drawn"
    w_in = torch.randn(n_experts, (2 if gated else 1) * d_expert, d_model, generator=g) / d_model**0.5
    # outputs of size O(1), where bf16's rounding of the hidden units stays within the bf16 tolerance
    w_down = torch.randn(n_experts, d_model, d_expert, generator=g) / (2 * d_expert**0.5)
    return [x, router_weight, w_in.to(dtype), w_down.to(dtype)]


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("gated", [True, False])
def test_opcheck(implementation, gated):
    inputs = [t.requires_grad_(True) for t in make_inputs(5, gated=gated)]
    with zoo.ops.kernel_choice(implementation):
        torch.library.opcheck(torch.ops.zoo.moe_layer.default, (*inputs, 2, "softmax-topk", "silu", gated))


def test_gradients_equal_the_references():
    inputs = [t.requires_grad_(True) for t in make_inputs(7)]
    with zoo.ops.kernel_choice("cpu"):
        ours = torch.autograd.grad(moe_layer(*inputs, 2, "topk-softmax", "silu", True).sum(), inputs)
    theirs = torch.autograd.grad(moe_layer_ref(*inputs, 2, "topk-softmax", "silu", True).sum(), inputs)
    for a, b in zip(ours, theirs):
        assert_close(a, b)
    assert ours[1].abs().max() > 0  # the router weight gets a gradient through the routing weights


TOKENS = [1, 5, 37]
# (gated, activation, top_k) for the CPU implementation, with every routing. Squared ReLU runs at top-3: at
# top-1 its larger outputs put zoo::moe_experts' bf16 hidden units (the CPU path this op calls) a few
# elements past the bf16 tolerance of the fp32 reference.
CPU_EXPERTS = [(True, "silu", 1), (True, "gelu_tanh", 2), (False, "gelu", 1), (False, "relu2", 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("gated, activation, top_k", CPU_EXPERTS)
def test_cpu_matches_reference(dtype, tokens, routing, gated, activation, top_k):
    inputs = make_inputs(tokens, gated=gated, dtype=dtype)
    expected = moe_layer_ref(*inputs, top_k, routing, activation, gated)
    with zoo.ops.kernel_choice("cpu"):
        actual = moe_layer(*inputs, top_k, routing, activation, gated)
    assert actual.dtype == dtype and actual.shape == inputs[0].shape
    assert_close(actual, expected, dtype)


# (routing, top_k, gated, activation) for the Triton implementation: both routings at top-1 and top-K > 1
TRITON_CASES = [
    ("softmax-topk", 1, True, "silu"),
    ("softmax-topk", 3, False, "relu2"),
    ("topk-softmax", 1, False, "gelu"),
    ("topk-softmax", 2, True, "silu"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("routing, top_k, gated, activation", TRITON_CASES)
def test_triton_matches_reference(dtype, tokens, routing, top_k, gated, activation):
    inputs = make_inputs(tokens, gated=gated, dtype=dtype)
    expected = moe_layer_ref(*inputs, top_k, routing, activation, gated)
    with zoo.ops.kernel_choice("triton"):
        actual = moe_layer(*inputs, top_k, routing, activation, gated)
    assert actual.dtype == dtype and actual.shape == inputs[0].shape
    assert_close(actual, expected, dtype)


# (n_experts, top_k, d_model): N not a power of two, N padded past 16, top-K = N, d over several BLOCK_D
ROUTING_SHAPES = [(6, 1, 40), (6, 2, 40), (6, 6, 40), (20, 3, 100), (64, 8, 72)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("n_experts, top_k, d_model", ROUTING_SHAPES)
@pytest.mark.parametrize("tokens", [1, 37])
def test_routing_kernel_matches_route_on_the_same_logits(dtype, routing, n_experts, top_k, d_model, tokens):
    x, router_weight, *_ = make_inputs(tokens, n_experts, d_model, d_expert=16, dtype=dtype, top_k=top_k)
    expected_weights, expected_experts = route(F.linear(x, router_weight), top_k, routing)
    weights, experts = moe_routing_triton(x, router_weight, top_k, routing)
    assert weights.dtype == torch.float32 and experts.dtype == torch.int64
    assert torch.equal(experts, expected_experts)
    assert_close(weights, expected_weights, torch.float32)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_routing_kernel_breaks_exact_ties_by_the_lowest_expert_index(routing):
    """Integer-valued inputs give exactly tied logits (experts in pairs with equal router rows, as upcycling
    with granularity 2 makes them): the kernel takes the lower index first, a stable descending sort."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (9, 24), generator=g).float()
    router_weight = torch.randint(-1, 2, (4, 24), generator=g).float().repeat_interleave(2, dim=0)  # 8 experts
    logits = F.linear(x, router_weight)
    weights, experts = moe_routing_triton(x, router_weight, 4, routing)
    assert torch.equal(experts, logits.sort(dim=-1, descending=True, stable=True).indices[:, :4])
    expected_weights, _ = route(logits, 4, routing)  # equal scores: the weights agree whatever the tie order
    assert_close(weights, expected_weights, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
def test_op_equals_router_linear_then_moe_experts(dtype, implementation):
    x, router_weight, w_in, w_down = make_inputs(13, dtype=dtype)
    config = (2, "topk-softmax", "silu", True)
    with zoo.ops.kernel_choice(implementation):
        fused = moe_layer(x, router_weight, w_in, w_down, *config)
        unfused = moe_experts(x, F.linear(x, router_weight), w_in, w_down, *config)
    if implementation == "triton":  # the routing kernel's logits and softmax differ in rounding only
        assert_close(fused, unfused, dtype)
    else:
        assert torch.equal(fused, unfused)


def test_export_with_dynamic_tokens_and_decomposition_to_the_reference():
    class Layer(torch.nn.Module):
        def forward(self, x, router_weight, w_in, w_down):
            return moe_layer(x, router_weight, w_in, w_down, 2, "softmax-topk", "relu2", False)

    tokens = torch.export.Dim("tokens", min=1, max=1024)
    program = torch.export.export(
        Layer(), tuple(make_inputs(6, gated=False)), dynamic_shapes=({0: tokens}, None, None, None)
    )
    assert sum(node.target == torch.ops.zoo.moe_layer.default for node in program.graph.nodes) == 1
    other = make_inputs(11, gated=False, seed=1)
    expected = moe_layer_ref(*other, 2, "softmax-topk", "relu2", False)
    with zoo.ops.kernel_choice("cpu"):
        assert_close(program.module()(*other), expected)
    table = torch.export.default_decompositions()
    table[torch.ops.zoo.moe_layer.default] = moe_layer_ref
    unfused = program.run_decompositions(table)
    targets = [node.target for node in unfused.graph.nodes if node.op == "call_function"]
    assert not any(getattr(target, "namespace", None) == "zoo" for target in targets)
    assert_close(unfused.module()(*other), expected)


def test_bad_arguments_give_clear_errors():
    x, router_weight, w_in, w_down = make_inputs(3)
    config = (2, "softmax-topk", "silu", True)
    with pytest.raises(ValueError, match=r"router_weight has shape \(5, 40\); the experts need .* = \(6, 40\)"):
        moe_layer(x, router_weight[:5], w_in, w_down, *config)
    with pytest.raises(ValueError, match=r"router_weight has shape \(6, 41\)"):
        moe_layer(x, F.pad(router_weight, (0, 1)), w_in, w_down, *config)
    with pytest.raises(ValueError, match=r"x has shape \(3, 41\); the experts need d_model=40"):
        moe_layer(F.pad(x, (0, 1)), router_weight, w_in, w_down, *config)
    with pytest.raises(ValueError, match=r"router_weight has shape \(1, 6, 40\)"):
        moe_layer(x, router_weight[None], w_in, w_down, *config)
    with pytest.raises(ValueError, match="router_weight is torch.float16, x is torch.float32"):
        moe_layer(x, router_weight.half(), w_in, w_down, *config)
    with pytest.raises(ValueError, match="top_k=7 must be in"):
        moe_layer(x, router_weight, w_in, w_down, 7, "softmax-topk", "silu", True)
    with pytest.raises(ValueError, match="unknown routing 'top1'"):
        moe_layer(x, router_weight, w_in, w_down, 2, "top1", "silu", True)
    with pytest.raises(ValueError, match="w_gate_up has shape"):
        moe_layer(x, router_weight, w_in, w_down, 2, "softmax-topk", "silu", False)


COMPILE_SCRIPT = """
import json
from zoo.ops.moe_layer.triton_kernel import TRITON_KERNELS
from zoo.ops.triton_aot import compile_kernel
kernels = [compile_kernel(spec, "moe_layer") for spec in TRITON_KERNELS]
print(json.dumps([{"target_line": ".target sm_90" in k.ptx, **k.summary()} for k in kernels]))
"""


def test_routing_kernel_compiles_for_sm90():
    """Compiled in a child process without TRITON_INTERPRET (the kernel reduces with tl.max / tl.sum, which
    are jitted helpers that triton.compile cannot take in their interpreted form)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    (kernel,) = json.loads(child.stdout.splitlines()[-1])
    assert kernel["name"] == "moe_layer_routing_bf16" and kernel["target"] == "sm_90" and kernel["target_line"]
    assert kernel["spill_bytes"] in (None, 0)
