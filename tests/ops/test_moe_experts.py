"""zoo::moe_experts: the reference against a per-token loop, the grouped CPU implementation and the Triton
kernel (interpreter) against the reference per dtype, the device-side block schedule."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.ops import onednn
from zoo.ops.moe_experts import ACTIVATIONS, moe_experts, moe_experts_ref, route
from zoo.ops.moe_experts.reference import expert_hidden
from zoo.ops.moe_experts.triton_kernel import block_schedule

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (gated, activation): SwiGLU experts and plain squared-ReLU / GeLU experts
EXPERTS = [(True, "silu"), (False, "relu2"), (True, "gelu_tanh"), (False, "gelu")]


def make_inputs(tokens, n_experts=5, d_model=40, d_expert=24, gated=True, dtype=torch.float32, seed=0, skew=0.0):
    """Inputs at awkward sizes; `skew` adds a bias towards experts 0 and 1 (many experts then get no token)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_model, generator=g)
    logits = torch.randn(tokens, n_experts, generator=g)
    logits[:, :2] += skew
    w_in = torch.randn(n_experts, (2 if gated else 1) * d_expert, d_model, generator=g) / d_model**0.5
    w_down = torch.randn(n_experts, d_model, d_expert, generator=g) / d_expert**0.5
    return [t.to(dtype) for t in (x, logits, w_in, w_down)]


def per_token_loop(x, logits, w_in, w_down, top_k, routing, activation, gated):
    """The routing equations token by token, in fp32."""
    weights, experts = route(logits, top_k, routing)
    y = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        for weight, e in zip(weights[t], experts[t]):
            h = expert_hidden(w_in[e].float() @ x[t].float(), activation, gated)
            y[t] += weight * (w_down[e].float() @ h)
    return y


@pytest.mark.parametrize("routing", ["softmax-topk", "topk-softmax"])
@pytest.mark.parametrize("gated, activation", EXPERTS)
def test_reference_matches_the_routing_equations(routing, gated, activation):
    inputs = make_inputs(11, gated=gated)
    expected = per_token_loop(*inputs, 2, routing, activation, gated)
    assert_close(moe_experts_ref(*inputs, 2, routing, activation, gated), expected)


def test_routing_variants():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    weights, experts = route(logits, 2, "softmax-topk")
    assert experts.tolist() == [[0, 1]]
    torch.testing.assert_close(weights, logits.softmax(-1)[:, :2])  # no renormalisation
    weights, _ = route(logits, 2, "topk-softmax")
    torch.testing.assert_close(weights, logits[:, :2].softmax(-1))  # sums to 1
    assert route(logits.half(), 2, "topk-softmax")[0].dtype == torch.float32


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("gated", [True, False])
def test_opcheck(implementation, gated):
    x, logits, w_in, w_down = make_inputs(6, gated=gated)
    for tensor in (x, logits, w_in, w_down):
        tensor.requires_grad_(True)
    with zoo.ops.kernel_choice(implementation):
        torch.library.opcheck(
            torch.ops.zoo.moe_experts.default, (x, logits, w_in, w_down, 2, "softmax-topk", "silu", gated)
        )


def test_gradients_equal_the_references():
    inputs = [t.requires_grad_(True) for t in make_inputs(7)]
    with zoo.ops.kernel_choice("cpu"):
        ours = torch.autograd.grad(moe_experts(*inputs, 2, "softmax-topk", "silu", True).sum(), inputs)
    theirs = torch.autograd.grad(moe_experts_ref(*inputs, 2, "softmax-topk", "silu", True).sum(), inputs)
    for a, b in zip(ours, theirs):
        assert_close(a, b)
    assert ours[1].abs().max() > 0  # the router logits get a gradient through the routing weights


# tokens: 1 (decode: K of N experts used), 6, 33, and 33 skewed (most experts get no token)
CPU_CASES = [(1, 0.0), (6, 0.0), (33, 0.0), (33, 4.0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens, skew", CPU_CASES)
@pytest.mark.parametrize("routing", ["softmax-topk", "topk-softmax"])
@pytest.mark.parametrize("gated, activation", EXPERTS[:2])
def test_cpu_matches_reference(dtype, tokens, skew, routing, gated, activation):
    inputs = make_inputs(tokens, gated=gated, dtype=dtype, skew=skew)
    expected = moe_experts_ref(*inputs, 2, routing, activation, gated)
    with zoo.ops.kernel_choice("cpu"):
        actual = moe_experts(*inputs, 2, routing, activation, gated)
    assert actual.dtype == dtype and actual.shape == inputs[0].shape
    assert_close(actual, expected, dtype)


def test_cpu_packed_experts_follow_in_place_updates():
    """fp32 experts without autograd run on oneDNN copies packed once; an update of the weights repacks."""
    inputs = make_inputs(33)
    w_in, w_down = inputs[2], inputs[3]
    with zoo.ops.kernel_choice("cpu"), torch.no_grad():
        assert onednn.packable(w_in) and onednn.packable(w_down)
        first = moe_experts(*inputs, 2, "softmax-topk", "silu", True)
        w_in.mul_(0.5)
        w_down[3].neg_()
        updated = moe_experts(*inputs, 2, "softmax-topk", "silu", True)
        expected = moe_experts_ref(*inputs, 2, "softmax-topk", "silu", True)
    assert_close(updated, expected)
    assert not torch.allclose(first, updated, atol=1e-3)


def test_cpu_with_every_token_on_one_expert_and_top_k_equal_to_n():
    inputs = make_inputs(9, skew=50.0)
    for top_k in (1, 5):
        expected = per_token_loop(*inputs, top_k, "topk-softmax", "silu", True)
        with zoo.ops.kernel_choice("cpu"):
            assert_close(moe_experts(*inputs, top_k, "topk-softmax", "silu", True), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens, skew", [(1, 0.0), (37, 0.0), (37, 4.0)])
@pytest.mark.parametrize(
    "gated, activation, routing", [(True, "silu", "topk-softmax"), (False, "relu2", "softmax-topk")]
)
def test_triton_matches_reference(dtype, tokens, skew, gated, activation, routing):
    inputs = make_inputs(tokens, gated=gated, dtype=dtype, skew=skew)
    expected = moe_experts_ref(*inputs, 2, routing, activation, gated)
    with zoo.ops.kernel_choice("triton"):
        actual = moe_experts(*inputs, 2, routing, activation, gated)
    assert actual.dtype == dtype
    assert_close(actual, expected, dtype)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_triton_activations(activation):
    inputs = make_inputs(5, gated=False, d_model=70, d_expert=80)  # several tiles in both reductions
    with zoo.ops.kernel_choice("triton"):
        actual = moe_experts(*inputs, 3, "softmax-topk", activation, False)
    assert_close(actual, moe_experts_ref(*inputs, 3, "softmax-topk", activation, False))


def test_block_schedule_lists_every_slot_once_in_blocks_of_one_expert():
    n_experts, block_m = 6, 4
    experts = torch.tensor([5, 0, 5, 5, 2, 5, 5, 0, 5])  # experts 1, 3, 4 get no slot
    sorted_slots, block_experts = block_schedule(experts, n_experts, block_m)
    assert block_experts.numel() == -(-experts.numel() // block_m) + n_experts  # fixed by the shapes only
    assert block_experts.tolist() == [0, 2, 5, 5, -1, -1, -1, -1, -1]
    blocks = sorted_slots.view(-1, block_m)
    real = sorted_slots[sorted_slots < experts.numel()]
    assert sorted(real.tolist()) == list(range(experts.numel()))
    for block, expert in zip(blocks, block_experts.tolist()):
        slots = block[block < experts.numel()]
        assert (experts[slots.long()] == expert).all()
        if expert < 0:
            assert slots.numel() == 0


def test_export_keeps_experts_the_example_did_not_route_to():
    """The example routes every token to experts 0 and 1; the exported program, run at another token count
    with tokens routed away from them, still equals the reference."""

    class Layer(torch.nn.Module):
        def forward(self, x, logits, w_in, w_down):
            return moe_experts(x, logits, w_in, w_down, 2, "topk-softmax", "silu", True)

    tokens = torch.export.Dim("tokens", min=1, max=1024)
    program = torch.export.export(
        Layer(), tuple(make_inputs(6, skew=50.0)), dynamic_shapes=({0: tokens}, {0: tokens}, None, None)
    )
    assert sum(node.target == torch.ops.zoo.moe_experts.default for node in program.graph.nodes) == 1
    other = make_inputs(13, seed=1, skew=-50.0)
    assert_close(program.module()(*other), moe_experts_ref(*other, 2, "topk-softmax", "silu", True))


def test_bad_arguments_give_clear_errors():
    x, logits, w_in, w_down = make_inputs(3)
    with pytest.raises(ValueError, match="unknown routing 'top1'"):
        moe_experts(x, logits, w_in, w_down, 2, "top1", "silu", True)
    with pytest.raises(ValueError, match="top_k=6 must be in"):
        moe_experts(x, logits, w_in, w_down, 6, "softmax-topk", "silu", True)
    with pytest.raises(ValueError, match="w_gate_up has shape"):
        moe_experts(x, logits, w_in, w_down, 2, "softmax-topk", "silu", False)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        moe_experts(x, logits, w_in, w_down, 2, "softmax-topk", "swish", True)
