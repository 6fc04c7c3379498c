"""`zoo export --format tensorrt` (export/tensorrt.py) on CPU: the TensorRT-ready graphs of every family pass
onnx.checker, hold only operators TensorRT's ONNX parser imports, and carry each zoo node as a plugin node
with no local function left for it; the CLI writes the artifact, says in one line that no engines were
built, and prints the build command and trtexec commands whose shapes are the profiles' over the graphs'
real input names; the plugins' AOT kernels are written; bad --max-batch / --max-seq values are usage
errors. The engine build itself needs TensorRT and a GPU (marked). Each family is exported once per
session (tests/export/conftest.py), and the ONNX tests check the same artifacts' fused graphs."""

import json
import re

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import zoo
from export.artifact import verify
from export.onnx_ops import DOMAIN, arguments
from export.tensorrt import (
    BUILD_SCRIPT,
    TensorRTExportError,
    check_plugin_op_type,
    check_tensorrt_onnx,
    expand_moe_nodes,
    export_tensorrt,
    input_profile,
    plugin_schemas,
    profile_axes,
    supported_onnx_ops,
    trtexec_shapes,
    unsupported_ops,
    value_specs,
)
from tests.export.conftest import TENSORRT_MAX_BATCH as MAX_BATCH
from tests.export.conftest import TENSORRT_MAX_SEQ as MAX_SEQ
from tests.test_bad_inputs import assert_error, cli, snapshot, workdir  # noqa: F401 (a fixture)
from zoo.cli import main
from zoo.errors import ZooError
from zoo.ops import tensorrt_plugin as tp
from zoo.ops.moe_experts import moe_experts_ref
from zoo.ops.registry import zoo_ops

FAMILIES = [
    pytest.param("llama-tiny", id="llama"),
    pytest.param("dmc-tiny", id="dmc"),
    pytest.param("mamba2-tiny", id="mamba2"),
    pytest.param("moe-tiny", id="moe"),
    pytest.param("gpt-tiny", id="gpt"),
    pytest.param("mamba2-hybrid-tiny", id="mamba2-hybrid"),
]


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """`zoo export llama-tiny --format tensorrt` run once: (result, artifact directory)."""
    path = tmp_path_factory.mktemp("cli") / "art"
    args = ["export", "llama-tiny", "--format", "tensorrt", "--max-batch", MAX_BATCH, "--max-seq", MAX_SEQ]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "-o", path]])
    return result, path


@pytest.fixture(scope="module")
def artifacts(cli_export, fused_artifacts):
    """Factory: the TensorRT artifact directory of a tiny model (llama-tiny's is the CLI's; the others are
    the session's exports, shared with the ONNX tests)."""
    return lambda name: cli_export[1] if name == "llama-tiny" else fused_artifacts(name)[1]


@pytest.mark.parametrize("name", FAMILIES)
def test_tensorrt_graphs_are_plugin_nodes_and_supported_ops(artifacts, name):
    path = artifacts(name)
    manifest = verify(path)
    section = manifest["tensorrt"]
    assert manifest["export_format"] == "tensorrt"
    for phase in ("prefill", "decode"):
        file = path / section["graphs"][phase]["file"]
        proto = onnx.load(file)
        with plugin_schemas(proto):
            onnx.checker.check_model(str(file), full_check=True)
        assert unsupported_ops(proto) == []
        zoo_nodes = [node for node in proto.graph.node if node.domain == DOMAIN]
        onnx_runtime_nodes = manifest["graphs"][phase]["zoo_nodes"]
        moe_nodes = sum(onnx_runtime_nodes.get(op, 0) for op in ("moe_experts", "moe_layer"))
        per_moe = 2 if phase == "decode" else 3  # the routed pair, or the schedule and two grouped GEMMs
        assert len(zoo_nodes) == sum(onnx_runtime_nodes.values()) + (per_moe - 1) * moe_nodes
        assert len(zoo_nodes) > 0 or name == "gpt-tiny"  # gpt's LayerNorm and GELU stay standard ops
        assert len(zoo_nodes) == section["graphs"][phase]["plugin_nodes"]
        for node in zoo_nodes:
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attributes["plugin_namespace"] == b"zoo" and attributes["plugin_version"] == b"1"
            (op,) = [op for op in zoo_ops().values() if op.op_type == node.op_type]
            plugin = section["plugins"][op.name]
            assert plugin["id"] == f"zoo::{node.op_type}" and not node.overload
            assert attributes["aot"] == 1 and plugin["implementation"] == "aot"  # every node: an AOT kernel
            # a plugin's workspace: outputs after the op's, which nothing reads
            n_outputs = len(op.overload._schema.returns)
            workspace = [f"{node.output[0]}_{name}" for name, _ in tp.plugins()[op.name].workspace]
            assert list(node.output[n_outputs:]) == workspace
            read = {value for n in proto.graph.node for value in n.input} | {o.name for o in proto.graph.output}
            assert not read & set(workspace)
        if name == "moe-tiny":  # each MoE layer as single-launch nodes (expand_moe_nodes)
            types = [node.op_type for node in zoo_nodes]
            single = ["MoeRoutedGateUp", "MoeRoutedDown"] if phase == "decode" else ["MoeSchedule", "MoeGroupedGateUp",
                                                                                   "MoeGroupedDown"]  # fmt: skip
            assert (
                [types.count(t) for t in ["MoeLayer", *single]]
                == [0] + [moe_nodes] * len(single)
                == [0, 2, 2, 2][: len(single) + 1]
            )
            assert section["graphs"][phase]["jit_plugin_nodes"] == 0
        if name.startswith("mamba2") and phase == "decode":  # the grown region, with its gate workspace
            steps = [node for node in zoo_nodes if node.op_type == "Mamba2DecodeStep"]
            assert steps and all(len(node.output) == 4 for node in steps)
        if name == "dmc-tiny" and phase == "prefill":  # dmc_prefill_cache's capacity: an attribute, one cache
            assert section["static_cache"] == {"prefill": MAX_SEQ}
            assert section["profiles"]["prefill"]["state.k.0"]["min"][2] == MAX_SEQ
        assert [f for f in proto.functions if f.domain == DOMAIN] == []
        onnx_runtime_graph = onnx.load(path / manifest["graphs"][phase]["file"])  # ONNX Runtime's keeps them
        assert {f.name for f in onnx_runtime_graph.functions} == {zoo_ops()[op].op_type for op in onnx_runtime_nodes}
    aot = {entry["id"] for entry in section["plugins"].values() if entry["implementation"] == "aot"}
    assert {payload["plugin"] for payload in section["aot_payloads"]} == aot


def shapes_of(command: str, flag: str) -> dict[str, list[int]]:
    """{input: shape} of a trtexec shape flag ("--optShapes=a:1x2,b:3")."""
    value = re.search(rf"{flag}=(\S+)", command).group(1)
    return {
        name: [int(d) for d in dims.split("x")] for name, dims in (item.rsplit(":", 1) for item in value.split(","))
    }


def test_cli_writes_the_artifact_says_why_no_engines_and_prints_the_build_command(cli_export):
    result, path = cli_export
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "no engines built" in line]
    assert notes == ["note: no engines built: TensorRT is not installed (pip install 'graph-zoo[tensorrt]' on a "
                     "machine with a CUDA GPU)"]  # fmt: skip
    manifest = verify(path)
    section = manifest["tensorrt"]
    assert section["engines"] is None and (path / BUILD_SCRIPT).is_file()
    assert section["build_command"] == f"python {path / BUILD_SCRIPT}"
    assert section["build_command"] in result.stdout
    assert section["axes"] == {"batch": [1, 2, 4], "prompt": [1, 24, 48], "cache": [1, 24, 48]}
    assert section["onnx_parser_ops"]["tensorrt_version"] == supported_onnx_ops()["tensorrt_version"]
    assert "trtexec cannot build them" in result.stdout
    for phase in ("prefill", "decode"):
        command = section["trtexec_commands"][phase]
        assert command in result.stdout
        assert f"--loadEngine={path / section['graphs'][phase]['engine']}" in command
        names = [record["name"] for record in manifest["graphs"][phase]["inputs"]]
        profile = section["profiles"][phase]
        assert list(profile) == names  # every graph input, by its real name, in order
        assert shapes_of(command, "--shapes") == {name: shapes["opt"] for name, shapes in profile.items()}
        for record in manifest["graphs"][phase]["inputs"]:
            for level, index in (("min", 0), ("opt", 1), ("max", 2)):
                want = [section["axes"][d][index] if isinstance(d, str) else d for d in record["shape"]]
                assert profile[record["name"]][level] == want


def test_the_build_script_needs_tensorrt(cli_export, monkeypatch):
    import sys

    from export.tensorrt import build_artifact_engines

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    with pytest.raises(ZooError, match=r"cannot build the engines of .*: TensorRT is not installed"):
        build_artifact_engines(cli_export[1])


def test_a_graph_without_plugin_nodes_gets_trtexec_build_commands(artifacts):
    path = artifacts("gpt-tiny")  # its fused graphs hold no zoo nodes
    manifest = verify(path)
    section = manifest["tensorrt"]
    assert section["plugins"] == {} and section["aot_payloads"] == []
    for phase in ("prefill", "decode"):
        command, profile = section["trtexec_commands"][phase], section["profiles"][phase]
        assert section["graphs"][phase]["plugin_nodes"] == 0
        engine = path / section["graphs"][phase]["engine"]
        assert command.startswith(f"trtexec --onnx={path / section['graphs'][phase]['file']} --saveEngine={engine} ")
        assert "--stronglyTyped" in command and f"--timingCacheFile={path / 'tensorrt/timing.cache'}" in command
        assert list(profile) == [record["name"] for record in manifest["graphs"][phase]["inputs"]]
        for flag, level in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            assert shapes_of(command, flag) == {name: shapes[level] for name, shapes in profile.items()}


def test_max_batch_and_max_seq_are_checked(workdir):  # noqa: F811
    before = snapshot(workdir)
    export = ["export", "llama-tiny", "--format", "tensorrt", "-o", "out"]
    assert_error(cli(*export, "--max-batch", 0), "--max-batch", exit_code=2)
    assert_error(cli(*export, "--max-batch", -3), "--max-batch", exit_code=2)
    assert_error(cli(*export, "--max-seq", 0), "--max-seq", exit_code=2)
    assert_error(cli(*export, "--max-seq", "many"), "--max-seq", exit_code=2)
    assert_error(cli(*export, "--max-seq", 100000), "--max-seq", "exceeds the model's context", exit_code=2)
    assert_error(cli("export", "llama-tiny", "--max-batch", 2, "-o", "out"), "--format tensorrt", exit_code=2)
    assert snapshot(workdir) == before


def test_export_help_names_the_tensorrt_options():
    result = cli("export", "--help")
    assert result.exit_code == 0 and "--max-batch" in result.output and "--max-seq" in result.output


def test_profiles_span_one_to_the_maximum_with_opt_in_the_middle():
    assert profile_axes(8, 128) == {"batch": [1, 4, 8], "prompt": [1, 64, 128], "cache": [1, 64, 128]}
    assert profile_axes(1, 1) == {"batch": [1, 1, 1], "prompt": [1, 1, 1], "cache": [1, 1, 1]}
    with pytest.raises(ZooError, match="must be >= 1"):
        profile_axes(0, 16)
    axes = profile_axes(3, 5)
    records = [{"name": "tokens", "shape": ["batch"]}, {"name": "state.k.0", "shape": ["batch", 2, "cache", 4]}]
    profile = input_profile(records, axes)
    assert profile["state.k.0"] == {"min": [1, 2, 1, 4], "opt": [2, 2, 3, 4], "max": [3, 2, 5, 4]}
    assert trtexec_shapes(profile, "max") == "tokens:3,state.k.0:3x2x5x4"
    with pytest.raises(TensorRTExportError, match="axes \\['slots'\\] with no profile"):
        input_profile([{"name": "x", "shape": ["slots"]}], axes)


def test_ops_the_parser_lacks_are_named_in_one_error():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [4])
    nodes = [
        helper.make_node("BitShift", ["x", "x"], ["a"], direction="LEFT"),
        helper.make_node("Unique", ["a"], ["b"]),
        helper.make_node("FusedThing", ["b"], ["c"], domain="com.example"),
        helper.make_node("Identity", ["c"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 20)])
    assert unsupported_ops(model) == ["::BitShift", "::Unique", "com.example::FusedThing"]
    with pytest.raises(TensorRTExportError, match="decode graph holds ops .* ::BitShift, ::Unique, com.example"):
        check_tensorrt_onnx(model, "decode")


def test_the_supported_list_is_recorded_with_its_source():
    ops = supported_onnx_ops()
    assert ops["source"].startswith("https://github.com/onnx/onnx-tensorrt/") and ops["tensorrt_version"]
    assert {"MatMul", "ScatterND", "Softmax", "Gather", "CumSum"} <= set(ops["supported"])
    assert "Unique" in ops["unsupported"] and "Unique" not in ops["supported"]


def test_a_zoo_op_type_the_parser_imports_is_refused():
    from export.onnx_ops import OnnxExportError

    with pytest.raises(OnnxExportError, match="Gelu collides"):
        check_plugin_op_type("gelu")
    assert check_plugin_op_type("ssd_chunk_scan") == "SsdChunkScan"


def test_aot_payloads_are_written_for_every_aot_plugin(cli_export):
    """The plugins' AOT payloads (zoo.ops.tensorrt_plugin.aot_payload): a PTX file for sm_90 and a kernel
    name per distinct zoo node."""
    path = cli_export[1]
    section = verify(path)["tensorrt"]
    payloads = section["aot_payloads"]
    aot = {entry["id"] for entry in section["plugins"].values() if entry["implementation"] == "aot"}
    assert aot and {p["plugin"] for p in payloads} == aot
    listed = json.loads((path / "tensorrt/plugins/plugins.json").read_text())
    assert [p["ptx_file"] for p in listed] == [p["ptx_file"] for p in payloads]
    for payload in payloads:
        assert ".target sm_90" in (path / payload["ptx_file"]).read_text()
        assert payload["kernel_name"]


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engines_are_built_and_recorded_where_tensorrt_runs(tmp_path):
    path, section, missing = export_tensorrt(zoo.build("llama-tiny").eval(), tmp_path / "art", 2, 16)
    assert missing is None
    manifest = verify(path)  # the engines' sha256 among the files
    for phase in ("prefill", "decode"):
        assert section["engines"]["files"][phase] in manifest["files"]
    assert section["engines"]["timing_cache"] in manifest["files"]


def test_a_tensorrt_export_leaves_the_onnx_schemas_as_they_were(artifacts):
    """The plugin attributes extend the zoo schemas only while onnx.checker runs: a later ONNX export of
    the same process (dmc_prefill_cache's capacity is an input there, an attribute for TensorRT) still
    translates with the plain schema."""
    artifacts("dmc-tiny")
    schema = onnx.defs.get_schema("DmcPrefillCache", 1, DOMAIN)
    assert set(schema.attributes) == {"window"} and "capacity" in [p.name for p in schema.inputs]


def moe_experts_graph(typed_input: bool):
    """A graph of one zoo::moe_experts node on x (3, 8), logits (3, 4), 4 experts of 6; its input typed or
    the untyped output of an Identity."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape, np.float32), name) for name, shape in
               (("w_in", (4, 12, 8)), ("w_down", (4, 8, 6)))]  # fmt: skip
    moe = helper.make_node("MoeExperts", ["hidden", "logits", "w_in", "w_down"], ["y"], domain=DOMAIN, top_k=2,
                           routing="softmax-topk", activation="silu", gated=1)  # fmt: skip
    x, logits, hidden, y = (
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["tokens", width])
        for name, width in (("x", 8), ("logits", 4), ("hidden", 8), ("y", 8))
    )
    nodes = [helper.make_node("Identity", ["x"], ["hidden"]), moe]
    graph = helper.make_graph(nodes, "moe", [x, logits], [y], weights, value_info=[hidden] if typed_input else [])
    return helper.make_model(graph)


def test_an_moe_experts_node_becomes_the_two_routed_nodes_in_decode():
    model = moe_experts_graph(typed_input=True)
    expand_moe_nodes(model, "decode")
    nodes = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    assert nodes[1:] == [
        ("MoeRoutedGateUp", ["hidden", "logits", "w_in"], ["y_moe_hidden"]),
        ("MoeRoutedDown", ["y_moe_hidden", "logits", "w_down"], ["y"]),
    ]
    assert value_specs(model.graph)["y_moe_hidden"] == {"dtype": "float32", "shape": ["tokens", 2, 6]}
    x, logits = torch.randn(5, 8), torch.randn(5, 4)
    values = run_with_references(model, {"x": x, "logits": logits})
    w_in, w_down = (torch.from_numpy(onnx.numpy_helper.to_array(i)) for i in model.graph.initializer[:2])
    torch.testing.assert_close(values["y"], moe_experts_ref(x, logits, w_in, w_down, 2, "softmax-topk", "silu", True))


def test_an_moe_experts_node_becomes_the_schedule_and_grouped_nodes_in_prefill():
    """The graph's structure, and its numbers: run in ONNX Runtime with the three ops' references as local
    functions, it gives moe_experts' reference."""
    model = moe_experts_graph(typed_input=True)
    expand_moe_nodes(model, "prefill")
    assert [n.op_type for n in model.graph.node] == [
        "Identity", "MoeSchedule", "MoeGroupedGateUp", "MoeGroupedDown", "Reshape", "ReduceSum", "Cast",
    ]  # fmt: skip
    specs = value_specs(model.graph)
    assert specs["y_sorted_slots"] == {"dtype": "int32", "shape": ["y_blocks*64"]}
    assert specs["y_moe_hidden"]["shape"] == ["y_blocks*64", 6] and specs["y_slot_outputs"]["shape"] == ["tokens*2", 8]
    x, logits = torch.randn(37, 8), torch.randn(37, 4)
    values = run_with_references(model, {"x": x, "logits": logits})
    w_in, w_down = (torch.from_numpy(onnx.numpy_helper.to_array(i)) for i in model.graph.initializer[:2])
    torch.testing.assert_close(values["y"], moe_experts_ref(x, logits, w_in, w_down, 2, "softmax-topk", "silu", True))


def run_with_references(model, feeds: dict) -> dict:
    """Every value of a small graph, its zoo nodes run as their ops' references (attributes in schema
    order) and the few standard ops here as torch: the wiring of a rewritten graph, checked by numbers."""
    from onnx import helper, numpy_helper

    ops = {op.op_type: op for op in zoo_ops().values()}
    values = {**feeds, **{i.name: torch.from_numpy(numpy_helper.to_array(i)) for i in model.graph.initializer}}
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        inputs = [values[name] for name in node.input]
        if node.domain == DOMAIN:
            op = ops[node.op_type]
            result = op.reference(*inputs, *(attrs[a.name] for a in arguments(op) if a.kind == "attribute"))
        elif node.op_type == "Identity":
            result = inputs[0]
        elif node.op_type == "Reshape":
            result = inputs[0].reshape(inputs[1].tolist())
        elif node.op_type == "ReduceSum":
            result = inputs[0].sum(dim=inputs[1].tolist(), keepdim=bool(attrs["keepdims"]))
        else:  # Cast, to the graph's float32
            assert node.op_type == "Cast" and attrs["to"] == onnx.TensorProto.FLOAT
            result = inputs[0].float()
        values.update(zip(node.output, result if isinstance(result, tuple) else (result,)))
    return values


def test_an_moe_node_without_typed_inputs_is_refused():
    with pytest.raises(TensorRTExportError, match="zoo::MoeExperts's inputs hidden, w_down have no type and shape"):
        expand_moe_nodes(moe_experts_graph(typed_input=False), "decode")
