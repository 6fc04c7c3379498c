"""`zoo export --format tensorrt`: an artifact whose prefill and decode step TensorRT can build, and builds
where TensorRT and a CUDA GPU are present.

The artifact is the ONNX export's (export.onnx: `prefill.onnx`, `decode.onnx`, which ONNX Runtime runs as
they are, so the artifact is useful on a machine without TensorRT) plus a `tensorrt/` folder:
- `tensorrt/prefill.onnx`, `tensorrt/decode.onnx`: the TensorRT-ready copies (`tensorrt_onnx`). Each zoo
  node carries the attributes TensorRT's ONNX parser reads to take a plugin for a node: `plugin_namespace`
  "zoo" and `plugin_version` "1" (the parser looks the plugin up by op type, version and namespace; the
  zoo's plugins are "zoo::<OpType>" version 1, registered by zoo.ops.tensorrt_plugin.register_plugins) and
  `aot` 1 (the parser then asks a Python plugin for its ahead-of-time implementation only, so the engine
  embeds the PTX and runs without Python; 0 for a plugin that has a JIT implementation only). A size
  argument ONNX passes as an input (dmc_prefill_cache's capacity) becomes an attribute, so that graph's
  engine takes one cache length (`tensorrt_onnx`). Each MoE node becomes single-launch AOT nodes
  (`expand_moe_nodes`: an AOT plugin launches one kernel, and the MoE ops' GPU path is several): the
  routed pair in the decode graph, the schedule and grouped GEMMs in the prefill graph. The zoo's local
  functions are dropped:
  onnx-tensorrt imports a node that has a local function of its op type as that function unless the
  plugin is found, and a silent fallback to the reference body is what the plugin path must never do.
  `onnx.checker` runs with the zoo schemas extended by the plugin attributes (`plugin_schemas`), which are
  put back as they were after.
  Every other node must be an operator the parser supports (export/tensorrt_onnx_ops.json, taken from
  onnx-tensorrt's docs/operators.md): `unsupported_ops` names those that are not.
- `tensorrt/plugins/`: the plugins' AOT payloads (a PTX file per distinct zoo node and `plugins.json`
  with the kernel names, grids and arguments), where zoo.ops.tensorrt_plugin provides `aot_payload`;
- `tensorrt/prefill.engine`, `tensorrt/decode.engine`, `tensorrt/timing.cache`: strongly typed engines
  with one optimisation profile each (`profile_axes`), built where TensorRT and a GPU are present, else
  later by `tensorrt/build_engines.py` (`build_artifact_engines`). trtexec cannot build them: it loads
  plugins from shared libraries only (--staticPlugins, --dynamicPlugins), and the zoo's plugins are
  Python (tensorrt.plugin); it can run the built engines, whose AOT kernels need no Python.
The manifest gains `export_format` "tensorrt" and a `tensorrt` section (graphs, profiles, plugin ids,
AOT payloads, engines and timing cache, the build command, trtexec commands); every file, engines
included, is in its `files` table with size and sha256.
"""

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

from export.artifact import MANIFEST_FILE, check_writable, file_records, is_artifact, verify, write_artifact
from export.onnx_ops import DOMAIN, SIZE_INPUTS, OnnxExportError, arguments, check_op_type, op_type
from zoo.errors import ZooError

TENSORRT_DIR = "tensorrt"
PHASES = ("prefill", "decode")
PLUGIN_VERSION = "1"  # every zoo plugin's version in TensorRT's plugin registry
PLUGIN_ATTRIBUTES = {"plugin_namespace": DOMAIN, "plugin_version": PLUGIN_VERSION, "aot": 1}
PLUGIN_MODULE = "zoo.ops.tensorrt_plugin"
AOT_ARCH = "sm_90"
SUPPORTED_OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.json")
DEFAULT_MAX_BATCH = 8
# the default longest prompt and cache of the profiles: the model's context, capped (a Mamba-2 model has no
# context limit, and TensorRT sizes activations for a profile's maximum)
DEFAULT_MAX_SEQ = 4096
TIMING_CACHE = f"{TENSORRT_DIR}/timing.cache"
BUILD_SCRIPT = f"{TENSORRT_DIR}/build_engines.py"
BUILD_SCRIPT_TEXT = '''"""Build this artifact's TensorRT engines, on a machine with TensorRT, a CUDA GPU and graph-zoo:

    python build_engines.py

trtexec cannot do it: it loads plugins from shared libraries only, and the zoo's plugins are Python
(tensorrt.plugin). The engines, their optimisation profiles and the timing cache are written beside this
file and recorded in the artifact's manifest (export.tensorrt.build_artifact_engines)."""

from pathlib import Path

from export.tensorrt import build_artifact_engines

if __name__ == "__main__":
    build_artifact_engines(Path(__file__).resolve().parent.parent)
'''


class TensorRTExportError(OnnxExportError):
    """A graph TensorRT cannot take, or an engine build that failed."""


@cache
def supported_onnx_ops() -> dict:
    """export/tensorrt_onnx_ops.json: the operators TensorRT's ONNX parser imports, its version and source."""
    return json.loads(SUPPORTED_OPS_FILE.read_text())


def plugin_id(name: str) -> str:
    """The TensorRT plugin id of zoo op `name`: "zoo::AddRmsNorm"."""
    return f"{DOMAIN}::{op_type(name)}"


def check_plugin_op_type(name: str) -> str:
    """op_type(name), refusing one that TensorRT's ONNX parser imports itself (an ONNX operator, a TensorRT
    layer name, or one of the parser's own custom ops): the parser would not take the plugin for it."""
    camel = check_op_type(name)
    parser_ops = supported_onnx_ops()
    if camel in parser_ops["supported"] or camel in parser_ops["parser_custom_ops"]["ops"]:
        raise TensorRTExportError(f"zoo op {name}: op type {camel} is an operator TensorRT's ONNX parser imports")
    return camel


def register_plugin_schema(op, workspace: int = 0) -> None:
    """The op's zoo schema (export.onnx_ops.register_schema) with the optional plugin attributes added, and
    `workspace` optional outputs after the op's (the plugin's workspace, zoo.ops.tensorrt_plugin), so that
    onnx.checker accepts the TensorRT-ready nodes (and still accepts the ONNX Runtime graphs)."""
    import onnx

    from export.onnx_ops import register_schema

    register_schema(op)
    name = check_plugin_op_type(op.name)
    schema = onnx.defs.get_schema(name, op.version, DOMAIN)
    n_outputs = len(op.overload._schema.returns)
    if all(key in schema.attributes for key in PLUGIN_ATTRIBUTES) and len(schema.outputs) == n_outputs + workspace:
        return
    S = onnx.defs.OpSchema
    sizes = size_arguments(op)
    added = [
        S.Attribute("plugin_namespace", S.AttrType.STRING, "TensorRT plugin namespace", required=False),
        S.Attribute("plugin_version", S.AttrType.STRING, "TensorRT plugin version", required=False),
        S.Attribute("aot", S.AttrType.INT, "1: TensorRT takes the plugin's AOT implementation", required=False),
        *(S.Attribute(size, S.AttrType.INT, f"{size}, static for TensorRT", required=False) for size in sizes),
    ]
    optional = S.FormalParameterOption.Optional
    extended = S(
        name,
        DOMAIN,
        op.version,
        inputs=[
            S.FormalParameter(p.name, p.type_str, param_option=optional if p.name in sizes else p.option)
            for p in schema.inputs
        ],
        outputs=[
            *(S.FormalParameter(p.name, p.type_str, param_option=p.option) for p in schema.outputs[:n_outputs]),
            # a workspace is an fp32 scratch buffer (mamba2_decode_step's gate row)
            *(S.FormalParameter(f"workspace{i}", "tensor(float)", param_option=optional) for i in range(workspace)),
        ],
        type_constraints=[
            (c.type_param_str, list(c.allowed_type_strs), c.description) for c in schema.type_constraints
        ],
        attributes=[*schema.attributes.values(), *added],
        doc=schema.doc,
    )
    onnx.defs.deregister_schema(name, op.version, DOMAIN)
    onnx.defs.register_schema(extended)


@contextlib.contextmanager
def plugin_schemas(proto):
    """While the block runs, the zoo schemas of the graph's ops carry the plugin attributes, so that
    onnx.checker accepts the TensorRT-ready nodes; the plain schemas are put back after it, so the ONNX
    exports of the same process keep the op signatures they translate with."""
    import onnx

    from export.onnx_ops import register_schema

    ops = zoo_ops_by_type()
    workspace = {}  # op type -> the most outputs a node lists beyond the op's
    for node in proto.graph.node:
        if node.domain == DOMAIN:
            extra = len(node.output) - len(ops[node.op_type].overload._schema.returns)
            workspace[node.op_type] = max(workspace.get(node.op_type, 0), extra)
    plain = []
    for name, extra in workspace.items():
        op = ops[name]
        register_schema(op)
        plain.append(onnx.defs.get_schema(name, op.version, DOMAIN))
        register_plugin_schema(op, extra)
    try:
        yield
    finally:
        for schema in plain:
            onnx.defs.deregister_schema(schema.name, schema.since_version, DOMAIN)
            onnx.defs.register_schema(schema)


def zoo_ops_by_type() -> dict:
    from zoo.ops.registry import zoo_ops

    return {op_type(name): op for name, op in zoo_ops().items()}


def size_arguments(op) -> list[str]:
    """The op's size arguments that ONNX passes as int64 inputs (export.onnx_ops.SIZE_INPUTS)."""
    return [name for op_name, name in SIZE_INPUTS if op_name == op.name]


def tensorrt_onnx(
    proto, cache_capacity: int, phase: str, jit_ops: frozenset = frozenset(), workspace: dict | None = None
):
    """A copy of a fused graph for TensorRT's ONNX parser, and whether it needs a static cache length.

    Every zoo node gets the plugin attributes and loses its overload; the zoo's local functions are dropped
    (see the module docstring). A node's attributes are the op's scalar arguments in schema order (TensorRT
    hands them to a Python plugin positionally), the plugin attributes after them. A size argument that
    ONNX passes as an int64 input following the cache axis (dmc_prefill_cache's capacity) becomes an int
    attribute, `cache_capacity`: TensorRT's Python plugins take sizes as attributes only, so such a graph's
    engine is built for that one cache length. A plugin has no optional inputs: an absent one is refused.
    `aot` is 0 for the ops in `jit_ops` (plugins with a JIT implementation only: their engine runs them
    through Python). `workspace` {op name: names} lists a plugin's workspace outputs, which its nodes gain
    after the op's outputs as "<first output>_<name>" (nothing reads them). MoE nodes are first rewritten
    as single-launch ones, the `phase`'s form (`expand_moe_nodes`)."""
    import onnx
    from onnx import helper

    ops = zoo_ops_by_type()
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    expand_moe_nodes(model, phase)
    static_cache = False
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type not in ops:
            raise TensorRTExportError(f"the graph calls zoo::{node.op_type}, which this graph-zoo lacks")
        op = ops[node.op_type]
        given = dict(zip((a.name for a in arguments(op) if a.kind == "input"), node.input))
        current = {a.name: a for a in node.attribute}
        inputs, attributes = [], []
        for argument in arguments(op):
            if argument.name in size_arguments(op):
                attributes.append(helper.make_attribute(argument.name, cache_capacity))
                static_cache = True
            elif argument.kind == "attribute":
                attributes.append(current[argument.name])
            elif not given.get(argument.name):
                raise TensorRTExportError(f"zoo::{node.op_type}'s input {argument.name} is absent: its plugin needs it")
            else:
                inputs.append(given[argument.name])
        plugin_attributes = {**PLUGIN_ATTRIBUTES, "aot": int(op.name not in jit_ops)}
        attributes += [helper.make_attribute(key, value) for key, value in plugin_attributes.items()]
        node.ClearField("overload")
        del node.input[:], node.attribute[:]
        node.input.extend(inputs)
        node.attribute.extend(attributes)
        node.output.extend(f"{node.output[0]}_{name}" for name in (workspace or {}).get(op.name, ()))
    functions = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(functions)
    return model, static_cache


MOE_OP_TYPES = ("MoeExperts", "MoeLayer")


def _value_types(graph) -> dict:
    """{value name: (elem_type, [dims as int or dim_param])} of a graph's typed values and initializers."""
    types = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
            types[value.name] = (tensor.elem_type, dims)
    for init in graph.initializer:
        types[init.name] = (init.data_type, list(init.dims))
    return types


def _times(size, factor: int):
    """A dim (int or dim_param name) times an int, as the dim of a new value."""
    return size * factor if isinstance(size, int) else f"{size}*{factor}"


def expand_moe_nodes(model, phase: str) -> None:
    """Rewrite, in place, every zoo::moe_experts / zoo::moe_layer node of the graph as single-launch nodes
    TensorRT's ahead-of-time plugins take (the MoE ops' GPU path is several launches, and an AOT plugin
    launches one kernel). MoeLayer first becomes Gemm(x, router_weight, transB=1) -> logits. Then
        decode:  MoeRoutedGateUp(x, logits, w_gate_up) -> h (T, K, F), MoeRoutedDown(h, logits, w_down) -> y
                 (zoo/ops/moe_routed: a program per token and slot, which suits a step's few tokens);
        prefill: MoeSchedule(logits) -> slot weights, slot experts, sorted slots, block experts;
                 MoeGroupedGateUp(x, w_gate_up, sorted, blocks) -> h (R, F);
                 MoeGroupedDown(h, w_down, sorted, blocks, weights) -> (T*K, d) fp32;
                 Reshape (T, K, d), ReduceSum over K, Cast to x's dtype -> y
                 (zoo/ops/moe_grouped: zoo::moe_experts' own grouped GEMMs, each expert's weights read
                 once per block of its tokens).
    y equals moe_experts' up to the rounding of h to x's dtype, as its grouped kernels store h. The new
    values are typed in value_info."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from zoo.ops.moe_grouped.reference import BLOCK_M, schedule_blocks

    graph = model.graph
    types = _value_types(graph)
    nodes = []

    def typed(name, elem_type, shape):
        graph.value_info.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    for node in graph.node:
        if node.domain != DOMAIN or node.op_type not in MOE_OP_TYPES:
            nodes.append(node)
            continue
        x, second, w_gate_up, w_down = node.input
        if x not in types or w_down not in types:
            raise TensorRTExportError(f"zoo::{node.op_type}'s inputs {x}, {w_down} have no type and shape in the graph")
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        top_k, routing, activation, gated = (attributes[k] for k in ("top_k", "routing", "activation", "gated"))
        elem_type, (tokens, _) = types[x]
        n_experts, d_model, d_expert = types[w_down][1]
        out, name = node.output[0], node.name
        logits = second
        if node.op_type == "MoeLayer":
            logits = typed(f"{out}_router_logits", elem_type, [tokens, n_experts])
            nodes.append(helper.make_node("Gemm", [x, second], [logits], name=f"{name}_router", transB=1))
        if phase == "decode":
            hidden = typed(f"{out}_moe_hidden", elem_type, [tokens, top_k, d_expert])
            nodes += [
                helper.make_node("MoeRoutedGateUp", [x, logits, w_gate_up], [hidden], name=f"{name}_gate_up",
                                 domain=DOMAIN, top_k=top_k, routing=routing, activation=activation, gated=gated),
                helper.make_node("MoeRoutedDown", [hidden, logits, w_down], [out], name=f"{name}_down", domain=DOMAIN,
                                 top_k=top_k, routing=routing),
            ]  # fmt: skip
            continue
        slots = _times(tokens, top_k)
        blocks = schedule_blocks(slots, n_experts) if isinstance(slots, int) else f"{out}_blocks"
        schedule = [
            typed(f"{out}_slot_weights", TensorProto.FLOAT, [slots]),
            typed(f"{out}_slot_experts", TensorProto.INT32, [slots]),
            typed(f"{out}_sorted_slots", TensorProto.INT32, [_times(blocks, BLOCK_M)]),
            typed(f"{out}_block_experts", TensorProto.INT32, [blocks]),
        ]
        hidden = typed(f"{out}_moe_hidden", elem_type, [_times(blocks, BLOCK_M), d_expert])
        per_slot = typed(f"{out}_slot_outputs", TensorProto.FLOAT, [slots, d_model])
        per_choice = typed(f"{out}_per_choice", TensorProto.FLOAT, [tokens, top_k, d_model])
        summed = typed(f"{out}_summed", TensorProto.FLOAT, [tokens, d_model])
        graph.initializer.extend([
            numpy_helper.from_array(np.array([-1, top_k, d_model], np.int64), f"{out}_choice_shape"),
            numpy_helper.from_array(np.array([1], np.int64), f"{out}_choice_axis"),
        ])  # fmt: skip
        nodes += [
            helper.make_node("MoeSchedule", [logits], schedule, name=f"{name}_schedule", domain=DOMAIN, top_k=top_k,
                             routing=routing),
            helper.make_node("MoeGroupedGateUp", [x, w_gate_up, schedule[2], schedule[3]], [hidden],
                             name=f"{name}_gate_up", domain=DOMAIN, top_k=top_k, activation=activation, gated=gated),
            helper.make_node("MoeGroupedDown", [hidden, w_down, schedule[2], schedule[3], schedule[0]], [per_slot],
                             name=f"{name}_down", domain=DOMAIN),
            helper.make_node("Reshape", [per_slot, f"{out}_choice_shape"], [per_choice], name=f"{name}_choices"),
            helper.make_node("ReduceSum", [per_choice, f"{out}_choice_axis"], [summed], name=f"{name}_sum",
                             keepdims=0),
            helper.make_node("Cast", [summed], [out], name=f"{name}_cast", to=elem_type),
        ]  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)


def _all_nodes(graph):
    """Every node of a graph, with those of its subgraphs (If / Loop / Scan bodies)."""
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_nodes(subgraph)


def unsupported_ops(proto) -> list[str]:
    """The op types of the non-zoo nodes (of the graph, its subgraphs and its remaining local functions)
    that TensorRT's ONNX parser does not import, as "domain::OpType" ("" for ONNX's domain)."""
    supported = supported_onnx_ops()["supported"]
    nodes = [*_all_nodes(proto.graph), *(node for function in proto.functions for node in function.node)]
    local = {(f.domain, f.name) for f in proto.functions}
    return sorted(
        {
            f"{node.domain}::{node.op_type}"
            for node in nodes
            if node.domain != DOMAIN
            and (node.domain, node.op_type) not in local
            and not (node.domain in ("", "ai.onnx") and node.op_type in supported)
        }
    )


def check_tensorrt_onnx(proto, phase: str) -> None:
    """One error line if TensorRT's parser cannot take the graph: an unsupported operator or opset."""
    unsupported = unsupported_ops(proto)
    if unsupported:
        version = supported_onnx_ops()["tensorrt_version"]
        raise TensorRTExportError(
            f"the {phase} graph holds ops TensorRT {version}'s ONNX parser does not support: {', '.join(unsupported)}"
        )
    low, high = supported_onnx_ops()["opset_range"]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and not low <= opset <= high:
        raise TensorRTExportError(f"the {phase} graph is of opset {opset}; TensorRT's parser reads {low} to {high}")


# --- optimisation profiles -----------------------------------------------------------------------------


def profile_axes(max_batch: int, max_seq: int) -> dict[str, list[int]]:
    """[min, opt, max] of each dynamic axis. min 1: one sequence, a one-token prompt, a one-slot cache. max:
    --max-batch, and --max-seq for the prompt and the cache (a request's cache holds its prompt and new
    tokens). opt, the shapes TensorRT times tactics at: the middle of each range ((max + 1) // 2, the
    choice of TensorRT-LLM's generation profiles), so that no corner of the range gets all the tuning."""
    if max_batch < 1 or max_seq < 1:
        raise ZooError(f"--max-batch and --max-seq must be >= 1, got {max_batch} and {max_seq}")
    return {
        "batch": [1, (max_batch + 1) // 2, max_batch],
        "prompt": [1, (max_seq + 1) // 2, max_seq],
        "cache": [1, (max_seq + 1) // 2, max_seq],
    }


def input_profile(inputs: list[dict], axes: dict[str, list[int]]) -> dict[str, dict[str, list[int]]]:
    """{input name: {"min", "opt", "max": shape}} of a graph's input records (the manifest's)."""
    profile = {}
    for record in inputs:
        unknown = [d for d in record["shape"] if isinstance(d, str) and d not in axes]
        if unknown:
            raise TensorRTExportError(f"input {record['name']} has axes {unknown} with no profile")
        profile[record["name"]] = {
            level: [axes[d][i] if isinstance(d, str) else d for d in record["shape"]]
            for i, level in enumerate(("min", "opt", "max"))
        }
    return profile


def trtexec_shapes(profile: dict[str, dict[str, list[int]]], level: str) -> str:
    """trtexec's shape syntax: "input_ids:1x1,lengths:1,..."."""
    return ",".join(f"{name}:{'x'.join(map(str, shapes[level]))}" for name, shapes in profile.items())


def trtexec_commands(artifact: Path, section: dict) -> dict[str, str]:
    """Per phase, the trtexec command a GPU machine runs: for a graph without plugin nodes, the engine build
    (strongly typed, the profile's shapes, the shared timing cache); for one whose plugins are all AOT
    (trtexec cannot load Python plugins, but the engine embeds their kernels) the timing run of the engine
    build_engines.py writes, at the opt shapes; none for an engine that calls JIT plugins (Python)."""
    commands = {}
    for phase in PHASES:
        graph, profile = section["graphs"][phase], section["profiles"][phase]
        engine = artifact / graph["engine"]
        if graph["jit_plugin_nodes"]:
            continue
        if graph["plugin_nodes"]:
            commands[phase] = f"trtexec --loadEngine={engine} --shapes={trtexec_shapes(profile, 'opt')}"
        else:
            commands[phase] = (
                f"trtexec --onnx={artifact / graph['file']} --saveEngine={engine} --stronglyTyped "
                f"--minShapes={trtexec_shapes(profile, 'min')} --optShapes={trtexec_shapes(profile, 'opt')} "
                f"--maxShapes={trtexec_shapes(profile, 'max')} --timingCacheFile={artifact / TIMING_CACHE}"
            )
    return commands


def build_command(artifact: Path) -> str:
    return f"python {artifact / BUILD_SCRIPT}"


# --- plugin AOT payloads ----------------------------------------------------------------------------------


def plugin_module():
    """zoo.ops.tensorrt_plugin, or None where it is missing."""
    try:
        return importlib.import_module(PLUGIN_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (PLUGIN_MODULE, "tensorrt"):
            raise
        return None


def plugin_implementations(module) -> dict[str, str]:
    """{zoo op: "aot" or "jit"} of the ops zoo.ops.tensorrt_plugin has a plugin for ({} without the module)."""
    if module is None or not hasattr(module, "plugins"):
        return {}
    return {name: "aot" if plugin.aot is not None else "jit" for name, plugin in module.plugins().items()}


def plugin_workspace(module) -> dict[str, tuple[str, ...]]:
    """{zoo op: the names of its plugin's workspace outputs} for the plugins that declare some."""
    if module is None or not hasattr(module, "plugins"):
        return {}
    found = {name: tuple(n for n, _ in plugin.workspace) for name, plugin in module.plugins().items()}
    return {name: names for name, names in found.items() if names}


def value_specs(graph) -> dict[str, dict]:
    """{value name: {"dtype", "shape"}} of a graph's typed values (inputs, outputs, value_info, initializers);
    a dim is an int or the axis name ("batch", "prompt", "cache")."""
    import onnx

    from export.onnx import ONNX_DTYPES

    def dtype(elem_type: int) -> str:
        name = onnx.TensorProto.DataType.Name(elem_type)
        return ONNX_DTYPES.get(name, name.lower())

    return {name: {"dtype": dtype(elem), "shape": dims} for name, (elem, dims) in _value_types(graph).items()}


def node_attributes(node) -> dict:
    """A zoo node's op attributes (not the plugin ones), strings decoded."""
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in PLUGIN_ATTRIBUTES}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def write_aot_payloads(protos: dict, directory: Path, module, aot_ops: set[str]) -> list[dict]:
    """One payload per distinct node of an op in `aot_ops` (op, input dtypes and shapes, attributes):
    `module.aot_payload(op name, [(shape, dtype)] of its tensor inputs in schema order, attributes, arch,
    tactic)`'s PTX into tensorrt/plugins/<OpType>.<digest>.ptx, the rest of its record (with the inputs by
    name) into tensorrt/plugins/plugins.json."""
    ops = zoo_ops_by_type()
    plugins_dir = directory / TENSORRT_DIR / "plugins"
    records: dict[str, dict] = {}
    for phase, proto in protos.items():
        specs = value_specs(proto.graph)
        for node in proto.graph.node:
            if node.domain != DOMAIN or ops[node.op_type].name not in aot_ops:
                continue
            op = ops[node.op_type]
            names = [a.name for a in arguments(op) if a.kind == "input" and a.name not in size_arguments(op)]
            missing = [v for v in node.input if v not in specs]
            if missing:
                raise TensorRTExportError(f"zoo::{node.op_type}'s inputs {missing} have no type and shape in the graph")
            inputs = [{"name": n, **specs[v]} for n, v in zip(names, node.input)]
            attributes = node_attributes(node)
            key = json.dumps([node.op_type, inputs, attributes], sort_keys=True)
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            if digest in records:
                records[digest]["nodes"][phase] = records[digest]["nodes"].get(phase, 0) + 1
                continue
            pairs = [(spec["shape"], spec["dtype"]) for spec in inputs]
            payload = dict(module.aot_payload(op.name, pairs, attributes, arch=AOT_ARCH, tactic=0))
            ptx = payload.pop("ptx")
            plugins_dir.mkdir(parents=True, exist_ok=True)
            ptx_file = plugins_dir / f"{node.op_type}.{digest}.ptx"
            ptx_file.write_bytes(ptx.encode() if isinstance(ptx, str) else ptx)
            records[digest] = {
                "plugin": plugin_id(op.name),
                "op": op.name,
                "inputs": inputs,
                "attributes": attributes,
                "arch": AOT_ARCH,
                "ptx_file": str(ptx_file.relative_to(directory)),
                "nodes": {phase: 1},
                **payload,
            }
    listed = list(records.values())
    if listed:
        (plugins_dir / "plugins.json").write_text(json.dumps(listed, indent=2, default=str) + "\n")
    return listed


# --- engines ----------------------------------------------------------------------------------------------


def tensorrt_missing() -> str | None:
    """Why engines cannot be built or run here, in one line (None: TensorRT and a CUDA GPU are present)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'graph-zoo[tensorrt]' on a machine with a CUDA GPU)"
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and this machine has none"
    return None


def build_engine(trt, logger, onnx_file: Path, profile: dict, engine_file: Path, timing_cache: Path) -> None:
    """A strongly typed engine of one ONNX graph with one optimisation profile, reading and updating the
    timing cache. STRONGLY_TYPED is TensorRT 10's opt-in; TensorRT 11 types every network strongly and may
    drop the flag, hence the getattr."""
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise TensorRTExportError(f"TensorRT's ONNX parser rejects {onnx_file.name}: {errors}")
    config = builder.create_builder_config()
    optimisation = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimisation.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(optimisation)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTExportError(f"TensorRT could not build an engine of {onnx_file.name} (its log says why)")
    engine_file.write_bytes(memoryview(plan))
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))


def build_engines(directory: Path, section: dict) -> dict:
    """Build the prefill and decode engines of an artifact directory's `tensorrt` manifest section (the
    zoo plugins registered first); returns the section's `engines` entry."""
    from zoo.errors import require

    trt = require("tensorrt", "tensorrt")
    if section["plugins"]:
        module = plugin_module()
        if module is None or not hasattr(module, "register_plugins"):
            raise TensorRTExportError(f"the graphs hold zoo plugin nodes and {PLUGIN_MODULE} cannot register them")
        module.register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    for phase in PHASES:
        graph = section["graphs"][phase]
        build_engine(
            trt,
            logger,
            directory / graph["file"],
            section["profiles"][phase],
            directory / graph["engine"],
            directory / TIMING_CACHE,
        )
    return {
        "tensorrt_version": trt.__version__,
        "files": {phase: section["graphs"][phase]["engine"] for phase in PHASES},
        "timing_cache": TIMING_CACHE,
    }


def build_artifact_engines(path: str | os.PathLike) -> Path:
    """Build the engines of an exported TensorRT artifact in place and record them (and their sha256) in its
    manifest, which is replaced atomically. What tensorrt/build_engines.py runs."""
    path = Path(path)
    manifest = verify(path)
    section = manifest.get("tensorrt")
    if section is None:
        raise ZooError(f"{path} is not a TensorRT export; export it with `zoo export MODEL --format tensorrt`")
    missing = tensorrt_missing()
    if missing:
        raise ZooError(f"cannot build the engines of {path}: {missing}")
    section["engines"] = build_engines(path, section)
    manifest["files"] = file_records(path)
    tmp = path / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path / MANIFEST_FILE)
    print(f"built {', '.join(section['engines']['files'].values())} in {path}")
    return path


# --- the export -------------------------------------------------------------------------------------------


def save_tensorrt_graph(proto, directory: Path, phase: str, external: bool) -> dict:
    """Write and check a TensorRT-ready graph (external data when its ONNX Runtime twin has it)."""
    import onnx

    file = directory / TENSORRT_DIR / f"{phase}.onnx"
    file.parent.mkdir(exist_ok=True)
    data_file = f"{phase}.onnx.data" if external else None
    onnx.save_model(
        proto, file, save_as_external_data=external, all_tensors_to_one_file=True, location=data_file,
        size_threshold=1024,
    )  # fmt: skip
    try:
        with plugin_schemas(proto):
            onnx.checker.check_model(str(file), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise TensorRTExportError(f"the TensorRT {phase} graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return {
        "file": str(file.relative_to(directory)),
        "external_data": f"{TENSORRT_DIR}/{data_file}" if external else None,
        "engine": f"{TENSORRT_DIR}/{phase}.engine",
        "plugin_nodes": sum(node.domain == DOMAIN for node in proto.graph.node),
        "jit_plugin_nodes": sum(
            node.domain == DOMAIN and any(a.name == "aot" and a.i == 0 for a in node.attribute)
            for node in proto.graph.node
        ),
    }


def export_tensorrt(
    model,
    out_dir: str | os.PathLike,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_seq: int | None = None,
    fused: bool = True,
    dtype=None,
    overwrite: bool = False,
    manifest_extra: dict | None = None,
) -> tuple[Path, dict, str | None]:
    """Export `model` for TensorRT to the artifact directory `out_dir` (written atomically, with the rules
    of export.onnx.export_onnx; `manifest_extra` as there). max_seq defaults to the model's context, at most
    DEFAULT_MAX_SEQ. Engines are built where TensorRT and a CUDA GPU are present. Returns (path, the
    manifest's tensorrt section, why no engines were built or None)."""
    import onnx

    from export.onnx import export_onnx
    from zoo.checkpoint import check_output_directory
    from zoo.ops.registry import zoo_ops

    out_dir = check_output_directory(out_dir, overwrite, holds_ours=is_artifact, kind="zoo artifact")
    check_writable(out_dir)
    context = model.config.max_seq_len
    max_seq = min(context, DEFAULT_MAX_SEQ) if max_seq is None else max_seq
    if max_seq > context:
        raise ZooError(f"--max-seq {max_seq} exceeds the model's context of {context}")
    axes = profile_axes(max_batch, max_seq)
    zoo_ops()  # every op registered with torch before the passes look for them
    missing = tensorrt_missing()
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.onnx-", dir=out_dir.parent))
    try:
        onnx_dir = export_onnx(model, staging / "onnx", fused=fused, dtype=dtype, manifest_extra=manifest_extra)
        body = json.loads((onnx_dir / MANIFEST_FILE).read_text())

        def write(tmp: Path) -> dict:
            for name in body["files"]:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (onnx_dir / name).rename(tmp / name)
            module = plugin_module()
            ops_by_type = zoo_ops_by_type()
            implementations = plugin_implementations(module)
            jit_ops = frozenset(name for name, kind in implementations.items() if kind == "jit")
            protos, graphs, profiles, static_cache = {}, {}, {}, {}
            for phase in PHASES:
                entry = body["graphs"][phase]
                protos[phase], static = tensorrt_onnx(
                    onnx.load(tmp / entry["file"]), max_seq, phase, jit_ops, plugin_workspace(module)
                )
                check_tensorrt_onnx(protos[phase], phase)
                graphs[phase] = save_tensorrt_graph(protos[phase], tmp, phase, entry["external_data"] is not None)
                phase_axes = {**axes, "cache": [max_seq] * 3} if static else axes
                profiles[phase] = input_profile(entry["inputs"], phase_axes)
                if static:
                    static_cache[phase] = max_seq
            # the TensorRT graphs' zoo ops (not the ONNX Runtime graphs': expand_moe_nodes replaces the MoE ops)
            used = sorted(
                {ops_by_type[n.op_type].name for p in protos.values() for n in p.graph.node if n.domain == DOMAIN}
            )
            aot_ops = {name for name in used if implementations.get(name) == "aot"}
            has_payloads = module is not None and hasattr(module, "aot_payload")
            without = [name for name in used if name not in implementations]
            section = {
                "graphs": graphs,
                "axes": axes,
                "static_cache": static_cache,  # phases whose engine takes one cache length (tensorrt_onnx)
                "profiles": profiles,
                "plugins": {
                    name: {
                        "id": plugin_id(name),
                        "version": PLUGIN_VERSION,
                        "implementation": implementations.get(name),
                    }
                    for name in used
                },
                "aot_payloads": write_aot_payloads(protos, tmp, module, aot_ops) if has_payloads else [],
                "aot_payloads_note": None if has_payloads or not used else f"{PLUGIN_MODULE}.aot_payload is missing",
                "ops_without_plugins": without,  # the engine build fails until each has a plugin
                "onnx_parser_ops": {k: supported_onnx_ops()[k] for k in ("tensorrt_version", "source")},
                "build_command": build_command(out_dir),
                "engines": None,
            }
            section["trtexec_commands"] = trtexec_commands(out_dir, section)
            (tmp / BUILD_SCRIPT).write_text(BUILD_SCRIPT_TEXT)
            if missing is None:
                section["engines"] = build_engines(tmp, section)
            kept = {k: v for k, v in body.items() if k not in ("format", "format_version", "files")}
            return {**kept, "export_format": "tensorrt", "tensorrt": section}

        path = write_artifact(out_dir, write, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, json.loads((path / MANIFEST_FILE).read_text())["tensorrt"], missing
