"""The ONNX face of the zoo ops: a node in the `zoo` domain per op, with a schema registered from the torch
schema, a translation function for the exporter, and a model-local function holding the op's reference.

- op type: the op name in CamelCase ("add_rms_norm" -> "AddRmsNorm"), checked not to be an ONNX operator
  or a TensorRT layer name, so a TensorRT plugin of that name can take the node over;
- schema (domain "zoo", version = the op's registry version): tensor arguments are inputs (`Tensor?`
  optional), int/float/str/bool arguments are attributes, except the size arguments listed in
  SIZE_INPUTS, which follow a dynamic axis and so are int64 scalar inputs;
- functions: the scalars differ between nodes (eps, chunk size, window...), so each distinct set of
  (attributes, input dtypes and static sizes, present inputs) gets its own FunctionProto, told apart by
  the `overload` field (IR version 10): its body is the reference exported with the scalars baked in, its
  initializers turned into Constant nodes. The public torch.onnx.export inlines local functions (its
  version converter), so they are added to the model after export.
"""

import hashlib
import inspect
import re
from dataclasses import dataclass

import onnx
import torch
from onnx import helper

from zoo.errors import ZooError
from zoo.ops.registry import ZooOp, zoo_ops

DOMAIN = "zoo"
# SymInt arguments that are the size of a dynamic axis (the cache length): an int64 scalar input, not an attribute
SIZE_INPUTS = {("dmc_prefill_cache", "capacity")}
# TensorRT layer kinds (nvinfer1::LayerType) a zoo op type must not shadow
TENSORRT_NAMES = {
    "Activation", "Assertion", "Attention", "Cast", "Concatenation", "Condition", "Constant", "Convolution",
    "Cumulative", "Deconvolution", "Dequantize", "DynamicQuantize", "Einsum", "ElementWise", "Fill", "Gather",
    "GridSample", "Identity", "Iterator", "LoopOutput", "Lrn", "MatrixMultiply", "NMS", "NonZero",
    "Normalization", "OneHot", "Padding", "ParametricReLU", "PluginV2", "PluginV3", "Pooling", "Quantize",
    "RaggedSoftMax", "Recurrence", "Reduce", "Resize", "ReverseSequence", "RotaryEmbedding", "Scale", "Scatter",
    "Select", "Shape", "Shuffle", "Slice", "SoftMax", "Squeeze", "TopK", "TripLimit", "Unary", "Unsqueeze",
}  # fmt: skip
TENSOR_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)", "tensor(int64)",
                "tensor(int32)", "tensor(bool)", "tensor(int8)", "tensor(uint8)"]  # fmt: skip


class OnnxExportError(ZooError):
    """A model or op that cannot be exported to ONNX."""


def root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause of an exporter error (its outer messages are generic)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def op_type(name: str) -> str:
    """The ONNX op type of a zoo op: its name in CamelCase."""
    return "".join(part.capitalize() for part in name.split("_"))


def check_op_type(name: str) -> str:
    """op_type(name), refusing one that is an ONNX operator or a TensorRT layer name."""
    camel = op_type(name)
    if onnx.defs.has(camel) or camel in TENSORRT_NAMES:
        raise OnnxExportError(f"zoo op {name}: ONNX op type {camel} collides with an ONNX or TensorRT name")
    return camel


@dataclass(frozen=True)
class Argument:
    name: str
    kind: str  # "input" | "attribute"
    optional: bool = False
    attribute_type: type | None = None  # int, float, str or bool for an attribute


def arguments(op: ZooOp) -> list[Argument]:
    """The op's torch schema arguments as ONNX inputs and attributes."""
    args = []
    for arg in op.overload._schema.arguments:
        type_ = arg.type
        optional = isinstance(type_, torch.OptionalType)
        inner = type_.getElementType() if optional else type_
        if isinstance(inner, torch.TensorType) or (op.name, arg.name) in SIZE_INPUTS:
            args.append(Argument(arg.name, "input", optional))
            continue
        scalar = {"int": int, "SymInt": int, "float": float, "str": str, "bool": bool}.get(str(inner))
        if scalar is None or optional:
            raise OnnxExportError(f"zoo op {op.name}: argument {arg.name} of type {type_} has no ONNX form")
        args.append(Argument(arg.name, "attribute", attribute_type=scalar))
    return args


def output_names(op: ZooOp) -> list[str]:
    returns = op.overload._schema.returns
    return ["out"] if len(returns) == 1 else [f"out{i}" for i in range(len(returns))]


ATTRIBUTE_TYPES = {
    int: onnx.defs.OpSchema.AttrType.INT,
    float: onnx.defs.OpSchema.AttrType.FLOAT,
    str: onnx.defs.OpSchema.AttrType.STRING,
    bool: onnx.defs.OpSchema.AttrType.INT,  # ONNX has no bool attribute: 0 or 1
}


def register_schema(op: ZooOp) -> None:
    """Register the op's ONNX schema (domain zoo) once per process."""
    name = check_op_type(op.name)
    if onnx.defs.has(name, op.version, DOMAIN):
        return
    S = onnx.defs.OpSchema
    inputs, attributes, constraints = [], [], []
    for arg in arguments(op):
        if arg.kind == "input":
            option = S.FormalParameterOption.Optional if arg.optional else S.FormalParameterOption.Single
            inputs.append(S.FormalParameter(arg.name, f"T_{arg.name}", param_option=option))
            constraints.append((f"T_{arg.name}", TENSOR_TYPES, ""))
        else:
            attributes.append(S.Attribute(arg.name, ATTRIBUTE_TYPES[arg.attribute_type], arg.name))
    outputs = []
    for out in output_names(op):
        outputs.append(S.FormalParameter(out, f"T_{out}"))
        constraints.append((f"T_{out}", TENSOR_TYPES, ""))
    doc = f"zoo::{op.name} (docs/algorithms.md); torch schema: {op.schema}"
    schema = S(
        name, DOMAIN, op.version, inputs=inputs, outputs=outputs, type_constraints=constraints,
        attributes=attributes, doc=doc,
    )  # fmt: skip
    onnx.defs.register_schema(schema)


def translation(op: ZooOp):
    """The exporter's translation of a torch zoo node: one zoo-domain ONNX node with the op's attributes.

    The exporter reads the signature: unannotated parameters are inputs, annotated int/float/str/bool ones
    attributes (bool as an int)."""
    import onnxscript

    register_schema(op)
    opset = onnxscript.values.Opset(DOMAIN, op.version)
    emit = getattr(opset, op_type(op.name))
    args = arguments(op)

    def translate(*values, **kwargs):
        bound = translate.__signature__.bind(*values, **kwargs)
        bound.apply_defaults()
        inputs = [bound.arguments[a.name] for a in args if a.kind == "input"]
        attributes = {
            a.name: int(bound.arguments[a.name]) if a.attribute_type is bool else bound.arguments[a.name]
            for a in args
            if a.kind == "attribute"
        }
        return emit(*inputs, **attributes)

    defaults = {a.name: a.default_value for a in op.overload._schema.arguments if a.has_default_value()}
    defaults |= {a.name: None for a in args if a.optional}
    parameters, annotations = [], {}
    for i, a in enumerate(args):
        trailing = all(b.name in defaults for b in args[i:])  # a default only where no required argument follows
        default = defaults[a.name] if trailing else inspect.Parameter.empty
        parameters.append(inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
        if a.kind == "attribute":
            annotations[a.name] = a.attribute_type
    translate.__signature__ = inspect.Signature(parameters)
    translate.__annotations__ = annotations
    translate.__name__ = op_type(op.name)
    return translate


def translation_table() -> dict:
    return {op.overload: translation(op) for op in zoo_ops().values()}


# --- model-local functions: one per distinct (op, attributes, input types, present inputs) -----------------


class ReferenceCall(torch.nn.Module):
    """The op's reference with its scalar arguments baked in; tensor (and size) arguments are inputs."""

    def __init__(self, op: ZooOp, scalars: dict, present: list[str]):
        super().__init__()
        self.op, self.scalars, self.present = op, scalars, present

    def forward(self, *tensors):
        given = dict(zip(self.present, tensors))
        kwargs = {}
        for arg in arguments(self.op):
            if (self.op.name, arg.name) in SIZE_INPUTS:
                size = given[arg.name].item()
                torch._check(size >= 1)
                kwargs[arg.name] = size
            elif arg.kind == "input":
                kwargs[arg.name] = given.get(arg.name)
            else:
                kwargs[arg.name] = self.scalars[arg.name]
        return self.op.reference(**kwargs)


def _generic_size(size) -> int:
    """A symbolic size at a value away from the capture's small example (2, 5, 11), so that a body exported
    there specialises nothing (one chunk, a prompt shorter than a window): 7 * hint + 3 for each symbol."""
    if not isinstance(size, torch.SymInt):
        return int(size)
    expr = size.node.expr
    shape_env = size.node.shape_env
    return int(expr.xreplace({s: 7 * int(shape_env.backed_var_to_val[s]) + 3 for s in expr.free_symbols}))


def _example_value(value):
    """A concrete tensor like a graph node's fake value (at generic sizes), and its symbolic axes."""
    if isinstance(value, (int, torch.SymInt)):  # a size input
        return torch.tensor(_generic_size(value), dtype=torch.int64), []
    shape = [_generic_size(s) for s in value.shape]
    dynamic = [i for i, s in enumerate(value.shape) if isinstance(s, torch.SymInt)]
    if value.dtype.is_floating_point:
        tensor = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(value.dtype)
    else:
        tensor = torch.zeros(shape, dtype=value.dtype)
    return tensor, dynamic


def function_body(op: ZooOp, node: torch.fx.Node, overload: str) -> onnx.FunctionProto:
    """The op's reference, exported at the node's input types with the node's scalars, as a FunctionProto
    named like the node (domain zoo, the op type, `overload`)."""
    values = node_arguments(op, node)
    scalars, present, examples, dynamic_shapes = {}, [], [], []
    for arg in arguments(op):
        value = values.get(arg.name)
        if arg.kind == "attribute":
            scalars[arg.name] = value
        elif value is not None:
            example, dynamic = _example_value(value.meta["val"] if isinstance(value, torch.fx.Node) else value)
            present.append(arg.name)
            examples.append(example)
            dynamic_shapes.append({axis: torch.export.Dim.DYNAMIC for axis in dynamic} or None)
    module = ReferenceCall(op, scalars, present).eval()
    try:
        with torch.no_grad():
            program = torch.export.export(module, tuple(examples), dynamic_shapes=(tuple(dynamic_shapes),))
        proto = torch.onnx.export(
            program, dynamo=True, custom_translation_table=aten_translations(), verbose=False
        ).model_proto
    except Exception as exc:  # the exporters raise many kinds; report the cause on one line
        raise OnnxExportError(
            f"cannot export zoo op {op.name}'s reference as an ONNX function: {root_cause(exc)}"
        ) from exc
    graph = proto.graph
    renames = {i.name: a for i, a in zip(graph.input, present)}
    copies = []  # an output that is an input, or another output, again: an Identity gives it its own name
    for value, name in zip(graph.output, output_names(op)):
        if value.name in renames:
            copies.append((value.name, name))
        else:
            renames[value.name] = name
    nodes = [
        helper.make_node("Constant", [], [init.name], value=init, name=f"const_{init.name}")
        for init in graph.initializer
    ]
    nodes += list(graph.node)
    for n in nodes:
        n.input[:] = [renames.get(i, i) for i in n.input]
        n.output[:] = [renames.get(o, o) for o in n.output]
    nodes += [helper.make_node("Identity", [renames[source]], [name]) for source, name in copies]
    function = helper.make_function(
        DOMAIN,
        op_type(op.name),
        inputs=present,
        outputs=output_names(op),
        nodes=nodes,
        opset_imports=list(proto.opset_import),
        attributes=list(scalars),
        doc_string=f"reference of zoo::{op.name} with {scalars}",
    )
    function.overload = overload
    return function


def node_arguments(op: ZooOp, node: torch.fx.Node) -> dict:
    """The node's argument values by schema name (defaults filled in)."""
    schema = op.overload._schema
    values = {a.name: a.default_value if a.has_default_value() else None for a in schema.arguments}
    values |= dict(zip((a.name for a in schema.arguments), node.args)) | dict(node.kwargs)
    return values


def overload_key(op: ZooOp, node: torch.fx.Node) -> tuple:
    """What a function body depends on: the scalars, and each input's dtype and static sizes (None: absent)."""
    values = node_arguments(op, node)
    scalars, inputs = [], []
    for arg in arguments(op):
        value = values[arg.name]
        if arg.kind == "attribute":
            scalars.append((arg.name, value))
        else:
            meta = value.meta.get("val") if isinstance(value, torch.fx.Node) else value
            if isinstance(meta, torch.Tensor):  # static sizes are baked into the body, symbolic ones are not
                shape = tuple(s if isinstance(s, int) else "?" for s in meta.shape)
                inputs.append((str(meta.dtype), shape))
            else:
                inputs.append(None if meta is None else "int64")
    return tuple(scalars), tuple(inputs)


def overload_name(key: tuple) -> str:  # key: overload_key's
    """A readable, deterministic overload id: the attribute values and a hash of the whole key
    ("eps_1e-05.3fa2c1")."""
    scalars = "_".join(f"{name}_{value}" for name, value in key[0])
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:6]
    return f"{re.sub(r'[^A-Za-z0-9_.+-]', '', scalars)}.{digest}" if scalars else digest


_bodies: dict[tuple, onnx.FunctionProto] = {}


def local_function(op: ZooOp, node: torch.fx.Node) -> onnx.FunctionProto:
    """The FunctionProto a zoo node calls: one per (op, overload key), exported once per process (the key
    holds everything the body depends on, so the prefill and decode graphs share it)."""
    key = (op.name, *overload_key(op, node))
    if key not in _bodies:
        _bodies[key] = function_body(op, node, overload_name(key[1:]))
    return _bodies[key]


# --- ATen ops the exporter has no ONNX translation for ----------------------------------------------------


def aten_cummax(x, dim: int):
    """aten.cummax over the last axis as standard ONNX (ONNX has no CumMax): entry i is the max over the
    j <= i of an (L, L) lower-triangular mask, and its index the last such j holding the max."""
    from onnxscript import opset20 as op

    if dim not in (-1, len(x.shape) - 1):
        raise OnnxExportError(f"cummax over axis {dim} of a rank-{len(x.shape)} tensor: only the last axis exports")
    index = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(x, start=-1)), op.Constant(value_int=1))
    mask = op.LessOrEqual(op.Unsqueeze(index, [0]), op.Unsqueeze(index, [1]))  # [i, j]: j <= i
    rows = op.Unsqueeze(x, [-2])  # (..., 1, L): x_j for every i
    lowest = op.ReduceMin(x, keepdims=1)
    values = op.ReduceMax(op.Where(mask, rows, op.CastLike(lowest, x)), [-1], keepdims=0)
    holds_max = op.And(mask, op.Equal(rows, op.Unsqueeze(values, [-1])))
    indices = op.ReduceMax(op.Where(holds_max, index, op.Constant(value_int=-1)), [-1], keepdims=0)
    return values, indices


def aten_translations() -> dict:
    return {torch.ops.aten.cummax.default: aten_cummax}
