"""`zoo export --format onnx`: a model's prefill and decode step as ONNX graphs in an artifact directory.

Each phase is captured (passes.capture: dynamic batch, prompt and cache lengths), run through the fused or
the unfused pass pipeline, and exported with the dynamo exporter (`torch.onnx.export(program, dynamo=True)`):
- unfused: every zoo op decomposed into its reference, so the graph holds standard ONNX ops only;
- fused: every zoo op one node in the `zoo` domain (export.onnx_ops), with a model-local function per
  distinct attribute set holding the reference, so ONNX Runtime runs the graph as it is and TensorRT can
  swap a plugin in for the node.
The graph inputs and outputs are renamed to the capture's names (`input_ids`, `state.k.0`, ...,
`logits`, `new_state.k.0`, ...) and the symbolic dims to `batch`, `prompt`, `cache`; every graph passes
`onnx.checker.check_model(full_check=True)`. The state outputs are the program's user outputs (the
models return their state dict), checked against the graph signature's mutated inputs.

A model that reads images (`takes_media`: revilm) also gets its media encoder graph (export/media.py) as
media.onnx, recorded in the manifest's top-level "media" object.
"""

import os
import re
from collections import Counter
from pathlib import Path

import torch

from export.artifact import check_writable, is_artifact, tool_versions, write_artifact
from export.media import MEDIA_PHASE, media_entries, media_graph
from export.onnx_ops import (
    DOMAIN,
    OnnxExportError,
    aten_translations,
    local_function,
    op_type,
    root_cause,
    translation,
)
from zoo.ops.registry import op_of_node, zoo_ops

EXTERNAL_DATA_THRESHOLD = 2 << 30  # protobuf's 2 GB limit: larger weights go to a .data file beside the graph
# The standard ONNX ops we could emit instead of zoo nodes, and why the zoo node is kept (also in the manifest)
# (ONNX Runtime 1.32 on CPU runs all three; the graphs stay at the exporter's opset 20)
STANDARD_OP_CHOICES = {
    "rms_norm": "zoo node, not opset-23 RMSNormalization: add_rms_norm (two outputs) and gated_rms_norm have "
    "no standard op, and one zoo face per norm keeps the reference and the TensorRT plugin in step",
    "rope": "zoo node, not opset-23 RotaryEmbedding: the zoo op takes cos/sin already gathered per position "
    "(and the models' head layout); RotaryEmbedding's cache and position_ids inputs would need re-plumbing",
    "attention": "no opset-24 Attention: the models' attention is an ATen graph over the explicit KV cache "
    "(standard ops), and DMC's is a zoo op whose slot state Attention cannot hold",
}
ONNX_DTYPES = {
    "FLOAT": "float32",
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "DOUBLE": "float64",
    "INT64": "int64",
    "INT32": "int32",
    "BOOL": "bool",
    "INT8": "int8",
    "UINT8": "uint8",
}


def export_onnx(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    fused: bool = True,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    manifest_extra: dict | None = None,
) -> Path:
    """Export `model`'s prefill and decode step to an artifact directory `out_dir` (written atomically;
    a non-empty directory that is not an artifact is refused, an artifact is replaced only with
    `overwrite`). Weights above `external_data_threshold` bytes go to external data files. `manifest_extra`:
    more top-level manifest fields (export.quantize adds "quantization")."""
    from zoo.checkpoint import check_output_directory

    check_output_directory(out_dir, overwrite, holds_ours=is_artifact, kind="zoo artifact")  # before slow work
    check_writable(out_dir)
    if dtype is not None:
        model = model.to(dtype)
    model = model.eval()
    model_dtype = next(model.parameters()).dtype
    graphs = {phase: export_graph(model, phase, fused) for phase in ("prefill", "decode")}
    media = media_graph(model) if getattr(model, "takes_media", False) else None

    def write(tmp: Path) -> dict:
        entries = {}
        for phase, graph in graphs.items():
            entries[phase] = save_graph(graph, tmp, phase, external_data_threshold)
        media_record = (
            {} if media is None else {MEDIA_PHASE: save_media_graph(model, media, tmp, external_data_threshold)}
        )
        used = Counter()
        for graph in graphs.values():
            used.update(graph["zoo_nodes"])
        ops = zoo_ops()
        return {
            "family": model.config.family,
            "config": model.config.to_dict(),
            "dtype": str(model_dtype).removeprefix("torch."),
            "fused": fused,
            # prompts are encoder inputs and decoding starts at position 1 (t5; runtime/engine.py)
            "encoder_decoder": bool(getattr(model, "encoder_decoder", False)),
            "graphs": entries,
            **media_record,
            "zoo_ops": {
                name: {"version": ops[name].version, "domain": DOMAIN, "op_type": op_type(name), "count": count}
                for name, count in sorted(used.items())
            },
            "standard_onnx_ops": {"chosen": [], "considered": STANDARD_OP_CHOICES},
            "tools": tool_versions(),
            **(manifest_extra or {}),
        }

    return write_artifact(out_dir, write, overwrite)


def export_graph(model: torch.nn.Module, phase: str, fused: bool) -> dict:
    """One phase as an ONNX ModelProto with the capture's names, plus what the manifest says about it."""
    import onnx_ir as ir

    from passes.capture import capture
    from passes.manager import PassManager, fused_pipeline, unfused_pipeline

    captured = capture(model, phase)
    program, records = PassManager(fused_pipeline() if fused else unfused_pipeline()).run(captured.program)
    zoo_fx_nodes = [node for node in program.graph.nodes if op_of_node(node) is not None]
    table = aten_translations()
    if fused:
        used = {op_of_node(node).name: op_of_node(node) for node in zoo_fx_nodes}
        table |= {op.overload: translation(op) for op in used.values()}
    try:
        onnx_program = torch.onnx.export(program, dynamo=True, custom_translation_table=table, verbose=False)
    except Exception as exc:  # the exporter raises many kinds; report the cause on one line
        raise OnnxExportError(f"ONNX export of the {phase} step failed: {root_cause(exc)}") from exc
    graph = onnx_program.model.graph
    if fused:
        type_zoo_outputs(graph, zoo_fx_nodes)
    name_values(graph, program, captured, model.config.vocab_size)
    proto = ir.serde.serialize_model(onnx_program.model)
    if fused:
        add_functions(proto, zoo_fx_nodes)
    else:
        foreign = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
        if foreign:
            raise OnnxExportError(f"the unfused {phase} graph holds non-standard ONNX ops: {', '.join(foreign)}")
    return {
        "proto": proto,
        "captured": captured,
        "zoo_nodes": Counter(op_of_node(n).name for n in zoo_fx_nodes) if fused else Counter(),
        "passes": {r.name: r.hits for r in records if r.enabled},
    }


def _leaf_paths(spec) -> list:
    """For each flat leaf of a pytree spec, its path as a tuple of keys/indices."""
    from torch.utils import _pytree as pytree

    structure = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    paths = [None] * spec.num_leaves
    for path, leaf in pytree.tree_flatten_with_path(structure)[0]:
        paths[leaf] = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
    return paths


def name_values(graph, program: torch.export.ExportedProgram, captured, vocab: int) -> None:
    """Rename the graph's inputs and outputs to the capture's names, and its symbolic dims to the axes'."""
    import onnx_ir as ir

    by_key = {entry.key: entry for entry in captured.state}
    # inputs: (first, second, state dict) as positional args
    input_names = []
    for path in _leaf_paths(program.call_spec.in_spec):  # ((ids, lengths or positions, {state key: tensor}), {})
        position, *key = path[1:]
        input_names.append(by_key[key[0]].qualified_name if key else captured.input_names[position])
    if len(input_names) != len(graph.inputs):
        raise OnnxExportError(f"the exporter gave {len(graph.inputs)} inputs for {len(input_names)} program inputs")
    # outputs: (logits, state dict)
    output_names, output_shapes = [], []
    for path in _leaf_paths(program.call_spec.out_spec):
        if path == (0,):
            output_names.append("logits")
            output_shapes.append(("batch", vocab))
        else:
            entry = by_key[path[1]]
            output_names.append(f"new_{entry.qualified_name}")
            output_shapes.append(entry.shape)
    if len(output_names) != len(graph.outputs):
        raise OnnxExportError(f"the exporter gave {len(graph.outputs)} outputs for {len(output_names)} program outputs")
    check_state_outputs(program, output_names, input_names)

    symbols = {}
    for value, name in zip(graph.inputs, input_names):
        axes = captured.dynamic_axes.get(name, {})
        for axis, dim in enumerate(value.shape):
            if axis in axes and isinstance(dim, ir.SymbolicDim) and dim.value:
                symbols.setdefault(dim.value, axes[axis])
        value.name = name
        value.shape = ir.Shape([axes.get(axis, dim) for axis, dim in enumerate(value.shape)])
    for value, name, shape in zip(graph.outputs, output_names, output_shapes):
        if value.is_graph_input():  # a state the step leaves unchanged: the models return none such
            raise OnnxExportError(f"output {name} is the unchanged input {value.name}")
        value.name = name
        value.shape = ir.Shape(list(shape))
    rename_symbols(graph, symbols)


def check_state_outputs(program, output_names: list[str], input_names: list[str]) -> None:
    """Every state input the program mutates is returned as its new_state output (same value)."""
    signature = program.graph_signature
    user_inputs = [s.arg.name for s in signature.input_specs if s.kind.name == "USER_INPUT"]
    returned = dict(zip(output_names, (s.arg.name for s in signature.output_specs if s.kind.name == "USER_OUTPUT")))
    for spec in signature.output_specs:
        if spec.kind.name == "USER_INPUT_MUTATION":
            name = "new_" + input_names[user_inputs.index(spec.target)]
            if returned.get(name) != spec.arg.name:
                raise OnnxExportError(f"the program updates {name[4:]} in place but does not return it as {name}")


def rename_symbols(graph, symbols: dict[str, str]) -> None:
    """Use the axis names ("batch", "prompt", "cache") for the exporter's symbols in every value's shape."""
    import onnx_ir as ir

    if not symbols:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, symbols)) + r")\b")

    def renamed(shape):
        dims = []
        for dim in shape:
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                dim = pattern.sub(lambda m: symbols[m.group(1)], dim.value)
            dims.append(dim)
        return ir.Shape(dims)

    for node in ir.traversal.RecursiveGraphIterator(graph):
        for value in node.outputs:
            if value.shape is not None and not value.is_graph_output():
                value.shape = renamed(value.shape)


def zoo_node_pairs(onnx_nodes, zoo_fx_nodes: list[torch.fx.Node]) -> list[tuple]:
    """(ONNX zoo node, fx node) pairs: the exporter emits the zoo nodes of each op type in graph order."""
    by_type: dict[str, list] = {}
    for node in onnx_nodes:
        by_type.setdefault(node.op_type, []).append(node)
    fx_by_type: dict[str, list] = {}
    for node in zoo_fx_nodes:
        fx_by_type.setdefault(op_type(op_of_node(node).name), []).append(node)
    if {k: len(v) for k, v in by_type.items()} != {k: len(v) for k, v in fx_by_type.items()}:
        raise OnnxExportError("the exported graph's zoo nodes do not match the program's zoo ops")
    return [pair for kind, nodes in by_type.items() for pair in zip(nodes, fx_by_type[kind])]


def type_zoo_outputs(graph, zoo_fx_nodes: list[torch.fx.Node]) -> None:
    """The exporter knows a zoo node's output shapes (from the fake kernel) but not their dtypes: set them."""
    import onnx_ir as ir

    onnx_nodes = [n for n in graph if n.domain == DOMAIN]
    for onnx_node, fx_node in zoo_node_pairs(onnx_nodes, zoo_fx_nodes):
        values = fx_node.meta["val"]
        values = values if isinstance(values, (tuple, list)) else [values]
        for output, value in zip(onnx_node.outputs, values, strict=True):
            if output.type is None:
                output.type = ir.TensorType(ir.DataType.from_numpy(torch.empty((), dtype=value.dtype).numpy().dtype))


def add_functions(proto, zoo_fx_nodes: list[torch.fx.Node]) -> None:
    """Give each zoo node its overload and the model a local function per overload (the op's reference)."""
    import onnx

    functions: dict[tuple, onnx.FunctionProto] = {}
    onnx_nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    for onnx_node, fx_node in zoo_node_pairs(onnx_nodes, zoo_fx_nodes):
        function = local_function(op_of_node(fx_node), fx_node)
        onnx_node.overload = function.overload
        functions[(function.name, function.overload)] = function
    proto.functions.extend(functions.values())
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    proto.ir_version = max(proto.ir_version, 10)  # the overload field


def value_records(state_entries: list, proto_values) -> list[dict]:
    """Name, dtype, symbolic shape and state entry (None for the others) of graph inputs or outputs."""
    import onnx

    by_name = {e.qualified_name: e for e in state_entries}
    records = []
    for value in proto_values:
        tensor_type = value.type.tensor_type
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor_type.shape.dim]
        entry = by_name.get(value.name.removeprefix("new_"))
        records.append(
            {
                "name": value.name,
                "dtype": ONNX_DTYPES.get(dtype, dtype.lower()),
                "shape": shape,
                "state": entry.to_dict() if entry is not None else None,
            }
        )
    return records


def write_graph_file(proto, directory: Path, phase: str, external_data_threshold: int) -> str | None:
    """Write `phase`.onnx (its weights in `phase`.onnx.data past the threshold) and check it; returns the
    data file's name or None."""
    import onnx

    file = directory / f"{phase}.onnx"
    weight_bytes = sum(
        len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer
    )
    external = weight_bytes > external_data_threshold
    data_file = f"{phase}.onnx.data" if external else None
    onnx.save_model(
        proto,
        file,
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_file,
        size_threshold=1024,  # small constants (shapes, axes) stay inline, where shape inference reads them
    )
    try:
        onnx.checker.check_model(str(file), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"the {phase} graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return data_file


def save_graph(graph: dict, directory: Path, phase: str, external_data_threshold: int) -> dict:
    """Write the graph file (external data past the threshold), check it, and describe it for the manifest."""
    proto, captured = graph["proto"], graph["captured"]
    data_file = write_graph_file(proto, directory, phase, external_data_threshold)
    return {
        "file": f"{phase}.onnx",
        "external_data": data_file,
        "inputs": value_records(captured.state, proto.graph.input),
        "outputs": value_records(captured.state, proto.graph.output),
        "state_inputs": [e.qualified_name for e in captured.state],
        "state_outputs": [f"new_{e.qualified_name}" for e in captured.state],
        "zoo_nodes": dict(sorted(graph["zoo_nodes"].items())),
        "passes": graph["passes"],
    }


def save_media_graph(model: torch.nn.Module, proto, directory: Path, external_data_threshold: int) -> dict:
    """Write the media encoder graph (export.media.media_graph) as media.onnx; the manifest's "media" object."""
    entries = media_entries(model)
    return {
        "file": f"{MEDIA_PHASE}.onnx",
        "external_data": write_graph_file(proto, directory, MEDIA_PHASE, external_data_threshold),
        "inputs": value_records(entries, proto.graph.input),
        "outputs": value_records(entries, proto.graph.output),
        "embedding_model_id": model.embedding_model_id(),
    }
