"""zoo::moe_routed_gate_up / zoo::moe_routed_down: composed, they are zoo::moe_experts (against its reference
and a per-token loop of the routing equations); the Triton kernels (interpreter) against the references per
dtype at awkward sizes (one token, expert counts and widths that are not powers of two or block multiples);
opcheck; the argument checks."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from tests.ops.test_moe_experts import EXPERTS, make_inputs, per_token_loop
from zoo.ops.moe_experts import moe_experts_ref
from zoo.ops.moe_routed import moe_routed_down, moe_routed_down_ref, moe_routed_gate_up, moe_routed_gate_up_ref

ROUTINGS = ["softmax-topk", "topk-softmax"]


def routed(choice: str, x, logits, w_in, w_down, top_k, routing, activation, gated):
    with zoo.ops.kernel_choice(choice):
        h = moe_routed_gate_up(x, logits, w_in, top_k, routing, activation, gated)
        return h, moe_routed_down(h, logits, w_down, top_k, routing)


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("gated, activation", EXPERTS)
def test_the_two_ops_compose_to_moe_experts(routing, gated, activation):
    inputs = make_inputs(11, gated=gated)
    h, y = routed("reference", *inputs, 3, routing, activation, gated)
    assert h.shape == (11, 3, 24) and y.shape == (11, 40)
    assert_close(y, moe_experts_ref(*inputs, 3, routing, activation, gated))
    assert_close(y, per_token_loop(*inputs, 3, routing, activation, gated))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize(
    "tokens, n_experts, top_k, gated, activation",
    [(1, 5, 2, True, "silu"), (7, 5, 5, False, "relu2"), (9, 12, 3, True, "silu")],
)
def test_triton_matches_the_reference(dtype, routing, tokens, n_experts, top_k, gated, activation):
    """d_expert 70 and d_model 72 are not multiples of the 64-wide blocks; 5 and 12 experts pad to 8 and 16."""
    inputs = make_inputs(tokens, n_experts, d_model=72, d_expert=70, gated=gated, dtype=dtype, seed=tokens)
    h_ref, y_ref = routed("reference", *inputs, top_k, routing, activation, gated)
    h, y = routed("triton", *inputs, top_k, routing, activation, gated)
    assert h.dtype == y.dtype == dtype
    assert_close(h, h_ref, dtype)
    assert_close(y, y_ref, dtype)
    h_chained = moe_routed_down_ref(h_ref, inputs[1], inputs[3], top_k, routing)  # down alone, on the same h
    with zoo.ops.kernel_choice("triton"):
        assert_close(moe_routed_down(h_ref, inputs[1], inputs[3], top_k, routing), h_chained, dtype)


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
def test_opcheck(implementation):
    x, logits, w_in, w_down = make_inputs(6)
    h = moe_routed_gate_up_ref(x, logits, w_in, 2, "softmax-topk", "silu", True)
    with zoo.ops.kernel_choice(implementation):
        torch.library.opcheck(
            torch.ops.zoo.moe_routed_gate_up.default, (x, logits, w_in, 2, "softmax-topk", "silu", True)
        )
        torch.library.opcheck(torch.ops.zoo.moe_routed_down.default, (h, logits, w_down, 2, "softmax-topk"))


def test_bad_arguments_are_named():
    x, logits, w_in, w_down = make_inputs(4)
    h = moe_routed_gate_up_ref(x, logits, w_in, 2, "topk-softmax", "silu", True)
    with pytest.raises(ValueError, match="router_logits has shape"):
        moe_routed_gate_up(x, logits[:, :3], w_in, 2, "topk-softmax", "silu", True)
    with pytest.raises(ValueError, match="top_k=6 must be in"):
        moe_routed_gate_up(x, logits, w_in, 6, "topk-softmax", "silu", True)
    with pytest.raises(ValueError, match="unknown activation"):
        moe_routed_gate_up(x, logits, w_in, 2, "topk-softmax", "tanh", True)
    with pytest.raises(ValueError, match="x has shape"):
        moe_routed_gate_up(x[:, :8], logits, w_in, 2, "topk-softmax", "silu", True)
    with pytest.raises(ValueError, match="is not \\(T, top_k=3, F\\)"):
        moe_routed_down(h, logits, w_down, 3, "topk-softmax")
    with pytest.raises(ValueError, match="unknown routing"):
        moe_routed_down(h, logits, w_down, 2, "sinkhorn")
