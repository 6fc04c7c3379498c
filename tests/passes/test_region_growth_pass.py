"""Region growth: a Mamba-2 decode step's conv update, state update and gated norm become one
zoo::mamba2_decode_step node, the MoE router matmul joins zoo::moe_experts as zoo::moe_layer; the grown
programs equal the captured ones at other batch sizes; a chain with a value used elsewhere is left alone."""

import pytest
import torch
from torch import nn

from passes.capture import capture
from passes.manager import Pass, PassManager, fused_pipeline, lower_to_core_aten
from passes.region_growth_pass import GROWTHS, grow_mamba2_decode_step, grow_moe_layer
from tests.passes.conftest import prompts_batch, tiny_model
from zoo.ops.causal_conv1d import causal_conv1d_update
from zoo.ops.gated_rms_norm import gated_rms_norm
from zoo.ops.moe_experts import moe_experts
from zoo.ops.ssd_state_update import ssd_state_update


def zoo_targets(program) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if str(n.target).startswith("zoo.")]


@pytest.mark.parametrize("name", ["mamba2-tiny", "mamba2-hybrid-tiny", "moe-tiny"])
def test_grown_programs_equal_the_captured_ones(name):
    model = tiny_model(name)
    vocab = model.config.vocab_size
    prefill, decode = (capture(model, phase) for phase in ("prefill", "decode"))
    grown_prefill, _ = PassManager(fused_pipeline()).run(prefill.program)
    grown_decode, records = PassManager(fused_pipeline()).run(decode.program)
    targets = zoo_targets(grown_decode)
    if name.startswith("mamba2"):
        assert targets.count("zoo.mamba2_decode_step.default") == model.config.count("M")
        assert not {"zoo.ssd_state_update.default", "zoo.causal_conv1d_update.default"} & set(targets)
    else:
        assert targets.count("zoo.moe_layer.default") == model.config.n_layers
        assert "zoo.moe_experts.default" not in targets + zoo_targets(grown_prefill)
    for batch, length in ((1, 1), (3, 17)):
        ids, lengths = prompts_batch(vocab, batch, length, seed=length)
        with torch.no_grad():
            want, want_state = prefill.program.module()(ids, lengths, model.init_state(batch, length + 2))
            got, got_state = grown_prefill.module()(ids, lengths, model.init_state(batch, length + 2))
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
            tokens = want.argmax(-1)
            want_logits, want_new = decode.program.module()(tokens, lengths, want_state)
            got_logits, got_new = grown_decode.module()(tokens, lengths, got_state)
        torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(got_new, want_new, atol=1e-4, rtol=1e-3)  # the state outputs too


def test_growth_needs_the_fused_gated_norm_and_can_be_disabled():
    step = capture(tiny_model("mamba2-tiny"), "decode")
    for disabled in ("idiom_fusion.gated_rms_norm", "region_growth.mamba2_decode_step"):
        program, records = PassManager(fused_pipeline(), disabled=[disabled]).run(step.program)
        growth = next(r for r in records if r.name == "region_growth.mamba2_decode_step")
        assert growth.hits == 0 and growth.ops_after == growth.ops_before
        targets = zoo_targets(program)
        assert "zoo.mamba2_decode_step.default" not in targets and targets.count("zoo.ssd_state_update.default") == 2


class MambaDecodeChain(nn.Module):
    """The ops of one Mamba-2 decode step called directly; `leak` also returns the conv output, a value
    inside the region that the grown op does not produce."""

    heads, head_dim, groups, d_state = 4, 8, 2, 6

    def __init__(self, leak: bool):
        super().__init__()
        self.leak = leak
        inner = self.heads * self.head_dim
        self.conv_dim = inner + 2 * self.groups * self.d_state
        self.conv_weight = nn.Parameter(torch.randn(self.conv_dim, 4))
        self.A, self.D, self.dt_bias = (nn.Parameter(torch.randn(self.heads)) for _ in range(3))
        self.norm_weight = nn.Parameter(torch.rand(inner) + 0.5)

    def forward(self, window, ssm, xbc, z, dt):
        b = xbc.shape[0]
        conv_out, new_window = causal_conv1d_update(window, xbc, self.conv_weight, None)
        gn = self.groups * self.d_state
        x, B, C = conv_out.split([self.heads * self.head_dim, gn, gn], dim=-1)
        x = x.view(b, self.heads, self.head_dim)
        B, C = B.view(b, self.groups, self.d_state), C.view(b, self.groups, self.d_state)
        y, new_ssm = ssd_state_update(ssm, x, dt, -self.A.abs(), B, C, self.D, self.dt_bias, 0.0, float("inf"))
        group_size = self.heads * self.head_dim // self.groups
        out = gated_rms_norm(y.view(b, -1), z, self.norm_weight, group_size, 1e-5)
        return (out, new_window, new_ssm, conv_out) if self.leak else (out, new_window, new_ssm)


def chain_inputs(batch: int, chain: MambaDecodeChain):
    g = torch.Generator().manual_seed(batch)
    inner = chain.heads * chain.head_dim
    return (
        torch.randn(batch, chain.conv_dim, 4, generator=g),
        torch.randn(batch, chain.heads, chain.head_dim, chain.d_state, generator=g),
        torch.randn(batch, chain.conv_dim, generator=g),
        torch.randn(batch, inner, generator=g),
        torch.randn(batch, chain.heads, generator=g),
    )


def grow(module: nn.Module, example: tuple, growth) -> tuple[torch.export.ExportedProgram, int]:
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in example)
    program = torch.export.export(module, example, dynamic_shapes=dynamic)
    program, records = PassManager([Pass("core_aten", lower_to_core_aten, on_program=True), Pass("grow", growth)]).run(
        program
    )
    return program, records[-1].hits


def test_mamba_chain_grows_into_one_op_and_keeps_its_outputs():
    chain = MambaDecodeChain(leak=False)
    program, hits = grow(chain, chain_inputs(2, chain), grow_mamba2_decode_step)
    assert hits == 1 and zoo_targets(program) == ["zoo.mamba2_decode_step.default"]
    inputs = chain_inputs(3, chain)
    with torch.no_grad():
        for got, want in zip(program.module()(*inputs), chain(*inputs), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_chain_with_a_value_used_elsewhere_is_left_alone():
    chain = MambaDecodeChain(leak=True)
    program, hits = grow(chain, chain_inputs(2, chain), grow_mamba2_decode_step)
    assert hits == 0 and "zoo.ssd_state_update.default" in zoo_targets(program)


class Router(nn.Module):
    def __init__(self, leak: bool, experts: int = 6, d: int = 16, d_expert: int = 8):
        super().__init__()
        self.leak = leak
        self.router = nn.Linear(d, experts, bias=False)
        self.w_gate_up = nn.Parameter(torch.randn(experts, 2 * d_expert, d) * 0.2)
        self.w_down = nn.Parameter(torch.randn(experts, d, d_expert) * 0.2)

    def forward(self, x):
        logits = self.router(x)
        y = moe_experts(x, logits, self.w_gate_up, self.w_down, 2, "softmax-topk", "silu", True)
        return (y, logits) if self.leak else y


def test_router_matmul_grows_into_the_experts_op():
    router = Router(leak=False)
    program, hits = grow(router, (torch.randn(4, 16),), grow_moe_layer)
    assert hits == 1 and zoo_targets(program) == ["zoo.moe_layer.default"]
    assert "aten.mm.default" not in {str(n.target) for n in program.graph.nodes}
    x = torch.randn(7, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), router(x), atol=1e-5, rtol=1e-4)
    leaky, hits = grow(Router(leak=True), (torch.randn(4, 16),), grow_moe_layer)
    assert hits == 0 and zoo_targets(leaky) == ["zoo.moe_experts.default"]  # the logits are an output


def test_growths_run_after_idiom_fusion_and_before_kernel_selection():
    names = [p.name for p in fused_pipeline()]
    growths = [f"region_growth.{name}" for name in GROWTHS]
    assert names[-1] == "kernel_select" and names[-1 - len(growths) : -1] == growths
    assert max(i for i, n in enumerate(names) if n.startswith("idiom_fusion.")) < names.index(growths[0])
