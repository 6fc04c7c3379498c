"""`export_onnx` for every family's tiny model, fused and unfused: the manifest and onnx.checker pass, the
fused graphs hold one zoo node per targeted layer, and ONNX Runtime's greedy generation (prefill, then
decode steps fed their own state outputs) equals torch's at prompt lengths none of which is the capture
example's (2, 5, 11). Each (family, fused) is exported once per module (several seconds per graph)."""

from collections import Counter

import onnx
import pytest

import zoo
from export.artifact import verify
from export.onnx import export_onnx
from tests.conftest import informative_weights
from tests.export.parity import assert_parity, sessions

FAMILIES = ["llama-tiny", "gpt-tiny", "dmc-tiny", "mamba2-tiny", "mamba2-hybrid-tiny", "moe-tiny"]
FAST = {("llama-tiny", True), ("llama-tiny", False), ("mamba2-tiny", True), ("dmc-tiny", True)}
CASES = [
    pytest.param(
        (name, fused),
        id=f"{name}-{'fused' if fused else 'unfused'}",
        marks=() if (name, fused) in FAST else pytest.mark.slow,
    )
    for name in FAMILIES
    for fused in (True, False)
]
# the region ops each graph must hold once per layer that has the region (idioms are counted below)
REGIONS = {
    "llama-tiny": {"prefill": {"Swiglu": 2, "Rope": 4}, "decode": {"Swiglu": 2, "Rope": 4}},
    "gpt-tiny": {"prefill": {}, "decode": {}},
    "dmc-tiny": {"prefill": {"DmcPrefillCache": 2, "Swiglu": 2}, "decode": {"DmcDecodeAttention": 2, "Swiglu": 2}},
    "mamba2-tiny": {
        "prefill": {"CausalConv1d": 2, "SsdChunkScan": 2, "GatedRmsNorm": 2},
        "decode": {"Mamba2DecodeStep": 2},  # conv step, state update and gated norm, grown into one
    },
    "mamba2-hybrid-tiny": {
        "prefill": {"CausalConv1d": 2, "SsdChunkScan": 2, "GatedRmsNorm": 2},
        "decode": {"Mamba2DecodeStep": 2},  # conv step, state update and gated norm, grown into one
    },
    "moe-tiny": {"prefill": {"MoeLayer": 2, "Rope": 4}, "decode": {"MoeLayer": 2, "Rope": 4}},
}


def prompt_lengths(context: int) -> list[list[int]]:
    """1, 37 and 300 tokens (or the longest the context holds with the decode steps), and a mixed batch."""
    return [[1], [37], [min(300, context - 8)], [37, 1, 20]]


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory, fused_artifacts):
    """(name, fused, model, artifact): a fused artifact is the session's `--format tensorrt` export (its
    ONNX graphs are the fused export's), an unfused one an `export_onnx` of its own."""
    name, fused = request.param
    if fused:
        return name, fused, *fused_artifacts(name)
    model = informative_weights(zoo.build(name)).eval()
    return name, fused, model, export_onnx(model, tmp_path_factory.mktemp(name) / "artifact", fused=False)


def test_manifest_and_checker(exported):
    name, fused, model, path = exported
    manifest = verify(path)
    assert (manifest["format"], manifest["format_version"], manifest["fused"]) == ("zoo-artifact", 1, fused)
    assert manifest["family"] == model.config.family and manifest["config"] == model.config.to_dict()
    onnx_files = {name for name in manifest["files"] if not name.startswith("tensorrt/")}
    assert onnx_files == {"prefill.onnx", "decode.onnx"}
    spec = model.state_spec()
    for phase, first in (("prefill", ["input_ids", "lengths"]), ("decode", ["tokens", "positions"])):
        graph = manifest["graphs"][phase]
        names = [i["name"] for i in graph["inputs"]]
        assert names == first + [e.qualified_name for e in spec]
        assert [o["name"] for o in graph["outputs"]] == ["logits"] + [f"new_{e.qualified_name}" for e in spec]
        assert graph["inputs"][0]["shape"] == (["batch", "prompt"] if phase == "prefill" else ["batch"])
        assert graph["outputs"][0]["shape"] == ["batch", model.config.vocab_size]
        for record, entry in zip(graph["inputs"][2:], spec):
            assert record["state"] == entry.to_dict() and record["shape"] == list(entry.shape)
        proto = onnx.load(path / graph["file"])
        onnx.checker.check_model(proto, full_check=True)
        assert [i.name for i in proto.graph.input] == names
        domains = {n.domain for n in proto.graph.node}
        if not fused:
            assert domains <= {"", "ai.onnx"}
            assert not proto.functions


def test_fused_graphs_hold_one_zoo_node_per_targeted_layer(exported):
    name, fused, model, path = exported
    manifest = verify(path)
    for phase in ("prefill", "decode"):
        proto = onnx.load(path / manifest["graphs"][phase]["file"])
        zoo_nodes = Counter(n.op_type for n in proto.graph.node if n.domain == "zoo")
        if not fused:
            assert not zoo_nodes
            continue
        for op_type, count in REGIONS[name][phase].items():
            assert zoo_nodes[op_type] == count, (phase, zoo_nodes)
        if name != "gpt-tiny":  # gpt's LayerNorm and GELU MLP are no zoo idiom
            norms = zoo_nodes["RmsNorm"] + zoo_nodes["AddRmsNorm"]
            assert norms >= model.config.n_layers + 1, zoo_nodes  # every layer's norm(s) and the final one
        recorded = {op_type_of(op): n for op, n in manifest["graphs"][phase]["zoo_nodes"].items()}
        assert recorded == dict(zoo_nodes)
        # every node calls a model-local function of its (domain, op type, overload)
        functions = {(f.domain, f.name, f.overload) for f in proto.functions}
        assert {(n.domain, n.op_type, n.overload) for n in proto.graph.node if n.domain == "zoo"} <= functions


def op_type_of(name: str) -> str:
    from export.onnx_ops import op_type

    return op_type(name)


def test_onnx_runtime_matches_torch(exported):
    name, fused, model, path = exported
    graphs = sessions(path)
    for lengths in prompt_lengths(model.config.max_seq_len):
        assert_parity(graphs, model, lengths)
