"""zoo::moe_schedule / zoo::moe_grouped_gate_up / zoo::moe_grouped_down: composed, they are zoo::moe_experts;
the schedule kernel (interpreter) gives the reference's schedule exactly (every slot once, stable order,
blocks of one expert, padding), also when most experts get no token; the grouped kernels against their
references per dtype; opcheck; the argument checks."""

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from tests.ops.test_moe_experts import EXPERTS, make_inputs
from zoo.ops.moe_experts import moe_experts_ref
from zoo.ops.moe_grouped import BLOCK_M, moe_grouped_down, moe_grouped_gate_up, moe_schedule, moe_schedule_ref

ROUTINGS = ["softmax-topk", "topk-softmax"]


def grouped(choice: str, x, logits, w_in, w_down, top_k, routing, activation, gated):
    """(schedule, h, y) of the three ops under one kernel choice."""
    with zoo.ops.kernel_choice(choice):
        schedule = moe_schedule(logits, top_k, routing)
        weights, _, sorted_slots, block_experts = schedule
        h = moe_grouped_gate_up(x, w_in, sorted_slots, block_experts, top_k, activation, gated)
        out = moe_grouped_down(h, w_down, sorted_slots, block_experts, weights)
    return schedule, h, out.view(x.shape[0], top_k, -1).sum(1).to(x.dtype)


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("gated, activation", EXPERTS)
def test_the_three_ops_compose_to_moe_experts(routing, gated, activation):
    inputs = make_inputs(37, gated=gated)  # 111 slots over 5 experts: groups across block boundaries
    _, h, y = grouped("reference", *inputs, 3, routing, activation, gated)
    assert h.shape == ((-(-37 * 3 // BLOCK_M) + 5) * BLOCK_M, 24)
    assert_close(y, moe_experts_ref(*inputs, 3, routing, activation, gated))


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("tokens, n_experts, top_k, skew", [(1, 5, 2, 0.0), (37, 6, 3, 0.0), (100, 12, 4, 0.0),
                                                            (70, 12, 2, 8.0)])  # fmt: skip
def test_the_schedule_kernel_gives_the_reference_schedule(routing, tokens, n_experts, top_k, skew):
    """skew 8: nearly every token picks experts 0 and 1, so ten groups are empty and two span blocks."""
    _, logits, _, _ = make_inputs(tokens, n_experts, skew=skew, seed=tokens)
    expected = moe_schedule_ref(logits, top_k, routing)
    with zoo.ops.kernel_choice("triton"):
        weights, experts, sorted_slots, block_experts = moe_schedule(logits, top_k, routing)
    torch.testing.assert_close(weights, expected[0])
    assert torch.equal(experts, expected[1]) and torch.equal(sorted_slots, expected[2])
    assert torch.equal(block_experts, expected[3])
    listed = sorted_slots[sorted_slots < tokens * top_k]
    assert sorted(listed.tolist()) == list(range(tokens * top_k))  # every slot once


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gated, activation", EXPERTS[:2])
def test_grouped_kernels_match_the_reference(dtype, gated, activation):
    """d_model 72 and d_expert 70 are not multiples of the kernels' blocks."""
    inputs = make_inputs(45, 6, d_model=72, d_expert=70, gated=gated, dtype=dtype)
    (weights, _, sorted_slots, block_experts), h_ref, y_ref = grouped("reference", *inputs, 2, "topk-softmax",
                                                                     activation, gated)  # fmt: skip
    _, h, y = grouped("triton", *inputs, 2, "topk-softmax", activation, gated)
    assert_close(h, h_ref, dtype)  # padding rows are 0 in both
    assert_close(y, y_ref, dtype)
    with zoo.ops.kernel_choice("triton"):  # down alone, on the reference's h
        out = moe_grouped_down(h_ref, inputs[3], sorted_slots, block_experts, weights)
    with zoo.ops.kernel_choice("reference"):
        assert_close(out, moe_grouped_down(h_ref, inputs[3], sorted_slots, block_experts, weights), torch.float32)


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
def test_opcheck(implementation):
    x, logits, w_in, w_down = make_inputs(6)
    weights, _, sorted_slots, block_experts = moe_schedule_ref(logits, 2, "softmax-topk")
    h = torch.randn(sorted_slots.shape[0], 24)
    with zoo.ops.kernel_choice(implementation):
        torch.library.opcheck(torch.ops.zoo.moe_schedule.default, (logits, 2, "softmax-topk"))
        gate_up_args = (x, w_in, sorted_slots, block_experts, 2, "silu", True)
        torch.library.opcheck(torch.ops.zoo.moe_grouped_gate_up.default, gate_up_args)
        torch.library.opcheck(torch.ops.zoo.moe_grouped_down.default, (h, w_down, sorted_slots, block_experts, weights))


def test_bad_arguments_are_named():
    x, logits, w_in, w_down = make_inputs(4)
    weights, _, sorted_slots, block_experts = moe_schedule_ref(logits, 2, "softmax-topk")
    h = torch.randn(sorted_slots.shape[0], 24)
    with pytest.raises(ValueError, match="top_k=6 must be in"):
        moe_schedule(logits, 6, "softmax-topk")
    with pytest.raises(ValueError, match="not \\(blocks \\* 64,\\) / \\(blocks,\\)"):
        moe_grouped_gate_up(x, w_in, sorted_slots[:-1], block_experts, 2, "silu", True)
    with pytest.raises(ValueError, match="are int32"):
        moe_grouped_gate_up(x, w_in, sorted_slots.long(), block_experts, 2, "silu", True)
    with pytest.raises(ValueError, match="unknown activation"):
        moe_grouped_gate_up(x, w_in, sorted_slots, block_experts, 2, "tanh", True)
    with pytest.raises(ValueError, match="slot_weights .* is not \\(T\\*K,\\) float32"):
        moe_grouped_down(h, w_down, sorted_slots, block_experts, weights.double())
    with pytest.raises(ValueError, match="h .* is not \\(rows of the schedule, F\\)"):
        moe_grouped_down(h[:, :5], w_down, sorted_slots, block_experts, weights)
