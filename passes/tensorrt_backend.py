"""The torch-tensorrt route of the zoo's torch.compile backend:
`torch.compile(fn, backend="zoo", options={"target": "tensorrt", ...})`.

What it does with the Dynamo graph:
1. lowers it to core ATen with AOTAutograd (functionalised: a state tensor the graph writes in place, such
   as a KV cache, becomes an output that AOTAutograd's wrapper copies back), inference only;
2. runs the zoo graph passes of the fused pipeline on that ATen graph (idiom fusion, region growth,
   kernel selection; passes/manager.py), so TensorRT sees one node per fused region;
3. with zoo_ops="plugins", rewrites each MoE node as single-launch ops whose plugins are AOT kernels
   (`route_moe_nodes`): moe="routed" (the default; a decode step) the two routed ops, which read an
   expert's weights once per routed token; moe="grouped" (a prefill) the schedule and the grouped GEMMs;
4. registers a torch-tensorrt converter for every zoo op left in the graph (`converter_ops`), which adds
   the op's TensorRT plugin to the network, and hands the graph to torch-tensorrt's dynamo backend
   (`torch.compile(backend="torch_tensorrt")`'s function, with the options as CompilationSettings), which
   traces the functional ATen graph once more with its own decompositions (zoo ops stay single nodes).

Plugins: the zoo's own Quick Deployable Plugins (QDP), registered by `zoo.ops.tensorrt_plugin.
register_plugins()` under the ids "zoo::<OpType>" (the op name in CamelCase), whose shape logic is the
fake kernel's and whose AOT implementation is the op's Triton kernel compiled to PTX. Chosen over
torch-tensorrt's generated plugins (`torch_tensorrt.dynamo.conversion.plugins.custom_op` /
`generate_plugin`) because those
- run a Python callback into torch at every engine execution (a JIT plugin), so an engine cannot be
  serialised for a runtime without Python, and every launch pays a host round trip;
- give every output the first input's dtype (dmc_prefill_cache returns int64 slot counts and fp32 running
  sums whatever the model's dtype), and handle only Tensor / int / float / bool / str arguments: an
  optional tensor (the Mamba-2 conv biases) is refused (`generated_plugin_unsupported` lists the ops).
torch-tensorrt's `generate_plugin_converter(plugin_id)` looks the torch op up under the plugin's own id, and
the ids differ ("zoo::ssd_chunk_scan" vs "zoo::SsdChunkScan"), so the converters here are written against
`dynamo_tensorrt_converter` directly: inputs and attributes are matched to the plugin by argument name.
A zoo op without a registered plugin runs in PyTorch (torch-tensorrt's partitioner puts it outside the
engine; the backend records which), and so does a call without an optional tensor (a conv bias of None:
the plugins take every tensor argument as an input, and the converter does not make up its zeros).
With `zoo_ops="torch"` every zoo op runs in PyTorch (the zoo kernels, outside the engines).

Options (besides "target"): "zoo_ops" ("plugins" | "torch"), "disable" (names of fused-pipeline passes to
skip, as `zoo passes --disable`), "moe" ("routed" | "grouped", step 3), and any of TENSORRT_SETTINGS,
passed to torch-tensorrt as they are.
Records on the Dynamo graph module: meta["zoo_pass_hits"] (hits per pass) and meta["zoo_tensorrt"]
(converter ops and counts, plugin ops, ops left to PyTorch).
"""

import difflib
import logging
import typing
from dataclasses import dataclass, field

import torch

from zoo.errors import ZooError, require

log = logging.getLogger(__name__)

ZOO_OPS_MODES = ("plugins", "torch")
ZOO_OPTIONS = ("target", "zoo_ops", "disable", "moe")
MOE_MODES = ("routed", "grouped")
# torch_tensorrt.dynamo.CompilationSettings fields a caller may set (torch-tensorrt 2.13 documents them)
TENSORRT_SETTINGS = (
    "enabled_precisions",
    "use_explicit_typing",
    "use_fp32_acc",
    "workspace_size",
    "min_block_size",
    "torch_executed_ops",
    "pass_through_build_failures",
    "require_full_compilation",
    "max_aux_streams",
    "version_compatible",
    "optimization_level",
    "use_python_runtime",
    "truncate_double",
    "use_fast_partitioner",
    "enable_experimental_decompositions",
    "device",
    "hardware_compatible",
    "timing_cache_path",
    "lazy_engine_init",
    "cache_built_engines",
    "reuse_cached_engines",
    "immutable_weights",
    "refit_identical_engine_weights",
    "strip_engine_weights",
    "sparse_weights",
    "tiling_optimization_level",
    "l2_limit_for_tiling",
    "offload_module_to_cpu",
    "enable_weight_streaming",
    "disable_tf32",
    "dryrun",
    "debug",
)


@dataclass(frozen=True)
class TensorRTOptions:
    zoo_ops: str = "plugins"
    disabled: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)  # torch-tensorrt CompilationSettings
    moe: str = "routed"


def unknown_option_error(kind: str, key: str, valid, candidates=None) -> ZooError:
    """One line: the unknown key, close matches among `candidates` (default: `valid`), the valid options."""
    close = difflib.get_close_matches(key, list(candidates if candidates is not None else valid), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ZooError(f"unknown {kind} option {key!r}{hint}; valid: {', '.join(valid)}")


def parse_tensorrt_options(options: dict) -> TensorRTOptions:
    """The options of target "tensorrt", checked: zoo options and torch-tensorrt settings."""
    unknown = [key for key in options if key not in ZOO_OPTIONS and key not in TENSORRT_SETTINGS]
    if unknown:
        raise unknown_option_error("tensorrt", unknown[0], (*ZOO_OPTIONS, *TENSORRT_SETTINGS))
    zoo_ops = options.get("zoo_ops", "plugins")
    if zoo_ops not in ZOO_OPS_MODES:
        raise ZooError(f"zoo_ops must be one of {', '.join(ZOO_OPS_MODES)}, got {zoo_ops!r}")
    disabled = options.get("disable", ())
    disabled = (disabled,) if isinstance(disabled, str) else tuple(disabled)
    names = [p.name for p in graph_passes()]
    unknown_passes = sorted(set(disabled) - set(names))
    if unknown_passes:
        raise ZooError(f"unknown pass(es) {', '.join(unknown_passes)} in disable; the passes are: {', '.join(names)}")
    moe = options.get("moe", "routed")
    if moe not in MOE_MODES:
        raise ZooError(f"moe must be one of {', '.join(MOE_MODES)}, got {moe!r}")
    settings = {key: value for key, value in options.items() if key in TENSORRT_SETTINGS}
    return TensorRTOptions(zoo_ops, disabled, settings, moe)


def graph_passes():
    """The fused pipeline's graph passes; its core_aten step is AOTAutograd's lowering here."""
    from passes.manager import fused_pipeline

    return [p for p in fused_pipeline() if not p.on_program]


def run_graph_passes(gm: torch.fx.GraphModule, disabled: tuple[str, ...] = ()) -> dict[str, int]:
    """Run the enabled graph passes on `gm` in place; hits per pass."""
    hits = {}
    for p in graph_passes():
        if p.name in disabled:
            continue
        result = p.run(gm)
        hits[p.name] = sum(result.values()) if isinstance(result, dict) else int(result)
        gm.recompile()
    return hits


def converter_ops(gm: torch.fx.GraphModule) -> dict[str, int]:
    """The zoo ops of a graph, each with its number of nodes, in graph order: what needs a converter."""
    from zoo.ops.registry import op_of_node

    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        op = op_of_node(node)
        if op is not None:
            counts[op.name] = counts.get(op.name, 0) + 1
    return counts


def route_moe_nodes(gm: torch.fx.GraphModule, mode: str = "routed") -> int:
    """Rewrite, in place, every zoo::moe_experts / zoo::moe_layer node (moe_layer's router as an aten.mm
    first) as single-launch ops whose plugins are AOT kernels, where the MoE ops' own plugins are JIT
    (several launches): mode "routed", zoo::moe_routed_gate_up then zoo::moe_routed_down (a decode step's
    few tokens); "grouped", zoo::moe_schedule, zoo::moe_grouped_gate_up, zoo::moe_grouped_down and the sum
    over the K choices (a prefill: each expert's weights read once per block of its tokens). The ONNX
    path's rewrite is the same (export.tensorrt.expand_moe_nodes). Returns the number of nodes rewritten."""
    import operator

    graph, zoo, aten = gm.graph, torch.ops.zoo, torch.ops.aten
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (zoo.moe_experts.default, zoo.moe_layer.default):
            continue
        x, second, w_gate_up, w_down, top_k, routing, activation, gated = node.args
        call = graph.call_function
        with graph.inserting_before(node):
            logits = second
            if node.target is zoo.moe_layer.default:
                logits = call(aten.mm.default, (x, call(aten.t.default, (second,))))
            if mode == "routed":
                hidden = call(zoo.moe_routed_gate_up.default, (x, logits, w_gate_up, top_k, routing, activation, gated))
                out = call(zoo.moe_routed_down.default, (hidden, logits, w_down, top_k, routing))
            else:
                schedule = call(zoo.moe_schedule.default, (logits, top_k, routing))
                weights, _, sorted_slots, blocks = (call(operator.getitem, (schedule, i)) for i in range(4))
                hidden = call(zoo.moe_grouped_gate_up.default, (x, w_gate_up, sorted_slots, blocks, top_k, activation,
                                                                gated))  # fmt: skip
                per_slot = call(zoo.moe_grouped_down.default, (hidden, w_down, sorted_slots, blocks, weights))
                d_model = w_down.meta["val"].shape[1]
                per_choice = call(aten.view.default, (per_slot, [-1, top_k, d_model]))
                summed = call(aten.sum.dim_IntList, (per_choice, [1]))
                out = call(aten._to_copy.default, (summed,), {"dtype": x.meta["val"].dtype})
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        rewritten += 1
    graph.lint()
    gm.recompile()
    return rewritten


def plugin_id(op_name: str) -> str:
    """The id of a zoo op's TensorRT plugin: "zoo::" and the op name in CamelCase."""
    return "zoo::" + "".join(part.capitalize() for part in op_name.split("_"))


def generated_plugin_unsupported(op_names) -> dict[str, list[str]]:
    """The ops torch-tensorrt's generated plugins cannot express, with the offending arguments."""
    from zoo.ops.registry import zoo_ops

    # the schema types torch-tensorrt's plugin generator maps to plugin inputs and attributes
    handled = [torch._C.TensorType, torch._C.FloatType, torch._C.IntType, torch._C.BoolType, torch._C.StringType]
    refused = {}
    for name in op_names:
        arguments = zoo_ops()[name].overload._schema.arguments
        bad = [f"{a.type} {a.name}" for a in arguments if not any(a.type.isSubtypeOf(t.get()) for t in handled)]
        if bad:
            refused[name] = bad
    return refused


def bind_arguments(schema, args, kwargs) -> dict:
    """Argument name -> value of one call (defaults filled in)."""
    bound = {}
    for i, argument in enumerate(schema.arguments):
        if i < len(args):
            bound[argument.name] = args[i]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        else:
            bound[argument.name] = argument.default_value
    return bound


def plugin_attribute(value, annotation):
    """A node's scalar argument as the plugin attribute type (QDP serialises numpy arrays and scalars)."""
    import numpy as np

    if annotation is np.ndarray or typing.get_origin(annotation) is np.ndarray:
        dtype_args = typing.get_args(typing.get_args(annotation)[1]) if typing.get_args(annotation) else ()
        return np.asarray(value, dtype=dtype_args[0] if dtype_args else None)
    return annotation(value) if annotation in (int, float, bool, str) else value


_CONVERTED: dict[str, bool] = {}  # op name -> whether a plugin converter is registered (once per process)


def register_plugin_converters(op_names) -> list[str]:
    """Register a converter for each op whose zoo plugin exists; returns the ops left without one."""
    require("tensorrt", "tensorrt")
    from tensorrt.plugin._lib import QDP_REGISTRY  # torch-tensorrt's own view of the registered plugins

    from zoo.ops.tensorrt_plugin import register_plugins

    if not any(key.startswith("zoo::") for key in QDP_REGISTRY):  # once per process (e.g. a runner did it)
        register_plugins()
    left = []
    for name in op_names:
        if name not in _CONVERTED:
            descriptor = QDP_REGISTRY.get(plugin_id(name))
            _CONVERTED[name] = descriptor is not None and _register_converter(name, descriptor)
        if not _CONVERTED[name]:
            left.append(name)
    return left


def _register_converter(name: str, descriptor) -> bool:
    import tensorrt.plugin as trtp
    from torch_tensorrt.dynamo.conversion import dynamo_tensorrt_converter
    from torch_tensorrt.dynamo.conversion.converter_utils import get_trt_tensor

    from zoo.ops.registry import zoo_ops

    overload = zoo_ops()[name].overload
    schema = overload._schema
    namespace, plugin_name = plugin_id(name).split("::")
    plugin = getattr(getattr(trtp.op, namespace), plugin_name)
    tensor_names, attributes = list(plugin.input_tensor_names), dict(plugin.input_attrs)
    argument_names = {a.name for a in schema.arguments}
    foreign = [n for n in (*tensor_names, *attributes) if n not in argument_names]
    if foreign:
        log.warning("plugin %s takes %s, not arguments of %s: it runs in PyTorch", plugin_id(name), foreign, schema)
        return False
    use_aot = getattr(descriptor, "aot_impl_func", None) is not None

    def tensors_present(node: torch.fx.Node, settings=None) -> bool:
        bound = bind_arguments(schema, node.args, node.kwargs)
        return all(bound[t] is not None for t in tensor_names)

    def convert(ctx, target, args, kwargs, layer_name):
        bound = bind_arguments(schema, args, kwargs)
        inputs = [get_trt_tensor(ctx, bound[t], f"{layer_name}_{t}") for t in tensor_names]
        attrs = {a: plugin_attribute(bound[a], annotation) for a, annotation in attributes.items()}
        layer = ctx.net.add_plugin(plugin(*inputs, **attrs), aot=use_aot)
        layer.name = f"[{target}]-[{layer_name}]"
        outputs = [layer.get_output(i) for i in range(len(schema.returns))]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    dynamo_tensorrt_converter(overload, capability_validator=tensors_present, supports_dynamic_shapes=True)(convert)
    return True


def torch_tensorrt_backend():
    """torch-tensorrt's dynamo backend, `fn(gm, example_inputs, options=settings)`."""
    require("torch_tensorrt", "tensorrt")
    return torch._dynamo.lookup_backend("torch_tensorrt")


def _no_backward(gm, example_inputs):
    raise ZooError("the tensorrt target compiles inference graphs: run the model under torch.no_grad()")


def tensorrt_backend(gm: torch.fx.GraphModule, example_inputs, options: TensorRTOptions):
    """The zoo passes on the ATen graph, then torch-tensorrt with converters for the zoo ops in it."""
    from torch._decomp import core_aten_decompositions
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_compiler

    tensorrt = torch_tensorrt_backend()  # before any work: a missing torch-tensorrt fails here

    def compile_forward(aten_gm: torch.fx.GraphModule, inputs):
        gm.meta["zoo_pass_hits"] = run_graph_passes(aten_gm, options.disabled)
        if options.zoo_ops == "plugins":
            gm.meta["zoo_pass_hits"]["tensorrt.route_moe"] = route_moe_nodes(aten_gm, options.moe)
        ops = converter_ops(aten_gm)
        in_torch = register_plugin_converters(ops) if options.zoo_ops == "plugins" else list(ops)
        record = {"converter_ops": ops, "plugins": [n for n in ops if n not in in_torch], "in_torch": in_torch}
        gm.meta["zoo_tensorrt"] = record
        log.info("tensorrt target: %s", record)
        settings = dict(options.settings)
        executed = {getattr(torch.ops.zoo, name).default for name in in_torch}
        settings["torch_executed_ops"] = {*settings.get("torch_executed_ops", ()), *executed}
        return tensorrt(aten_gm, inputs, options=settings)

    lower = aot_autograd(
        fw_compiler=make_boxed_compiler(compile_forward),
        bw_compiler=_no_backward,
        decompositions=core_aten_decompositions(),
    )
    return lower(gm, example_inputs)
