"""The pass manager over every family's captured graphs: hit counts per layer kind, disabling a pass by
name, the debug-mode numerics check, decomposition to standard ATen ops, kernel selection, `zoo passes`."""

import json

import pytest
import torch
from click.testing import CliRunner

import zoo
import zoo.ops
from passes.capture import capture
from passes.decompose_pass import decompose_pass
from passes.manager import Pass, PassManager, fused_pipeline, unfused_pipeline
from tests.passes.conftest import prompts_batch, tiny_model
from zoo.cli import main
from zoo.errors import ZooError


def expected_idiom_hits(config, phase: str) -> dict[str, int]:
    """Each idiom's hits from the layer counts: the norms of every sublayer and the final norm, the residual
    adds that feed a norm (all but the first layer's input norm and the final norm after the row select),
    the gated MLPs, the q and k rotations (inside DMC's decode op, not idioms there)."""
    n = config.n_layers
    if config.family in ("mamba2", "mamba2-hybrid"):
        return {"gated_rms_norm": config.count("M"), "rms_norm": n + 1, "add_rms_norm": n - 1, "swiglu": 0, "rope": 0}
    if config.norm != "rms":  # GPT: LayerNorm, learned positions, plain MLP
        return {"gated_rms_norm": 0, "rms_norm": 0, "add_rms_norm": 0, "swiglu": 0, "rope": 0}
    gated_mlps = n if config.mlp == "gated" else 0
    rotations = 0 if (config.attention == "dmc" and phase == "decode") else 2 * n
    return {
        "gated_rms_norm": 0,
        "rms_norm": 2 * n + 1,
        "add_rms_norm": 2 * n - 1,
        "swiglu": gated_mlps,
        "rope": rotations,
    }


def expected_growth_hits(config, phase: str) -> dict[str, int]:
    """Each region growth's hits: one Mamba-2 decode step per Mamba layer, one router per MoE layer."""
    mamba_steps = config.count("M") if config.family in ("mamba2", "mamba2-hybrid") and phase == "decode" else 0
    return {"mamba2_decode_step": mamba_steps, "moe_layer": config.n_layers if config.family == "moe" else 0}


def hits_of(records, prefix: str) -> dict[str, int]:
    return {r.name.removeprefix(prefix): r.hits for r in records if r.name.startswith(prefix)}


def test_fused_pipeline_hits_one_per_targeted_layer(family):
    _, model, steps = family
    for phase, step in steps.items():
        program, records = PassManager(fused_pipeline()).run(step.program)
        assert hits_of(records, "idiom_fusion.") == expected_idiom_hits(model.config, phase), phase
        assert hits_of(records, "region_growth.") == expected_growth_hits(model.config, phase), phase
        zoo_nodes = sum(n for op, n in records[-1].ops_after.items() if op.startswith("zoo."))
        assert records[-1].name == "kernel_select" and records[-1].hits == zoo_nodes  # every zoo node recorded
        for record in records:
            assert record.seconds >= 0 and sum(record.ops_after.values()) > 0


def test_unfused_program_has_standard_ops_only_and_equals_eager(family):
    _, model, steps = family
    vocab = model.config.vocab_size
    prefill, hits = decompose_pass(steps["prefill"].program)
    decode, _ = decompose_pass(steps["decode"].program)
    assert hits == len(steps["prefill"].zoo_nodes())
    for program in (prefill, decode):
        namespaces = {
            n.target.namespace
            for n in program.graph.nodes
            if n.op == "call_function" and hasattr(n.target, "namespace")
        }
        assert "zoo" not in namespaces
    for batch, length in ((1, 1), (3, 17), (2, 53)):
        ids, lengths = prompts_batch(vocab, batch, length, seed=length)
        with torch.no_grad():
            want, want_state = model.prefill(ids, lengths, model.init_state(batch, length + 3))
            got, got_state = prefill.module()(ids, lengths, model.init_state(batch, length + 3))
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
            tokens = want.argmax(-1)
            torch.testing.assert_close(
                decode.module()(tokens, lengths, got_state)[0],
                model.decode_step(tokens, lengths, want_state)[0],
                atol=1e-4,
                rtol=1e-3,
            )


def test_disabled_pass_leaves_its_region_unfused():
    step = capture(zoo.build("llama-tiny"), "decode")
    program, records = PassManager(fused_pipeline(), disabled=["idiom_fusion.rope"]).run(step.program)
    rope = next(r for r in records if r.name == "idiom_fusion.rope")
    assert not rope.enabled and rope.hits == 0 and rope.ops_after == rope.ops_before
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "zoo.rope.default" not in ops and "zoo.rms_norm.default" in ops


def test_unknown_pass_name_lists_the_passes():
    with pytest.raises(ZooError, match="unknown pass.*idiom_fusion.ropes.*the passes are: core_aten"):
        PassManager(fused_pipeline(), disabled=["idiom_fusion.ropes"])


@pytest.mark.slow
def test_debug_mode_checks_numerics_after_every_pass():
    step = capture(tiny_model("mamba2-tiny"), "prefill")
    _, records = PassManager(fused_pipeline(), debug=True).run(step.program, step.example_args)
    assert all(r.max_abs_diff is not None and r.max_abs_diff <= 1e-4 for r in records)

    def break_a_mul(gm):  # a faulty pass: one multiplication becomes an addition
        node = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.mul.Tensor)
        node.target = torch.ops.aten.add.Tensor
        return 1

    faulty = PassManager(
        [Pass("core_aten", fused_pipeline()[0].run, on_program=True), Pass("faulty", break_a_mul)], debug=True
    )
    with pytest.raises(ZooError, match="pass faulty changed the program's outputs"):
        faulty.run(step.program, step.example_args)
    with pytest.raises(ZooError, match="needs the captured example inputs"):
        PassManager(unfused_pipeline(), debug=True).run(step.program)


def test_kernel_selection_follows_the_kernel_choice():
    step = capture(zoo.build("moe-tiny"), "decode")
    with zoo.ops.kernel_choice("reference", ops=["moe_layer"]):
        program, records = PassManager(fused_pipeline()).run(step.program)
    assert records[-1].hits_by_kind == {"reference": 2, "cpu": 9}
    chosen = {n.meta["zoo_kernel"] for n in program.graph.nodes if n.target == torch.ops.zoo.moe_layer.default}
    assert chosen == {"reference"}


def test_zoo_passes_cli():
    result = CliRunner().invoke(
        main, ["passes", "llama-tiny", "--phase", "decode", "--disable", "idiom_fusion.rope", "--json"]
    )
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads(result.output)}
    assert records["idiom_fusion.rms_norm"]["hits"] == 5 and not records["idiom_fusion.rope"]["enabled"]
    table = CliRunner().invoke(main, ["passes", "llama-tiny", "--unfused"])
    assert table.exit_code == 0 and "decompose" in table.output and "zoo ops" in table.output
    bad = CliRunner().invoke(main, ["passes", "llama-tiny", "--disable", "fuse_everything"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: unknown pass(es) fuse_everything")
    assert len(bad.output.strip().splitlines()) == 1


def test_torch_compile_backend_by_name():
    model = zoo.build("llama-tiny")
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="zoo")(ids), model(ids))
