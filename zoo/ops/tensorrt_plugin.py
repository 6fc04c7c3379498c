"""The TensorRT face of the zoo ops: Python plugins (`tensorrt.plugin`, TensorRT's quickly deployable
plugins) built from each op's shape logic and Triton kernel. Everything here imports without TensorRT;
`register_plugins()` imports it and applies its decorators.

Each op folder's `tensorrt_plugin.py` lists `PLUGINS = [OpPlugin(...)]`: the op's `output_specs` (its
`shapes.py`, which the fake kernel calls too) and, when its CUDA path is one Triton launch, an `AotKernel`
(the kernel, its launch grid and scalar arguments as size expressions of the inputs, and its tactics).
Conventions (the ONNX side writes its nodes to match):
- plugin id "zoo::<OpType>", OpType the op name in CamelCase as the ONNX node's op type, version "1";
- inputs: the op's tensor arguments in schema order. A plugin has no optional inputs: an absent `Tensor?`
  (a conv bias) is passed as zeros of its shape, which gives the same result;
- attributes: the op's scalar arguments in schema order, without defaults (TensorRT allows none), as int,
  float, str or bool. TensorRT passes them to the AOT function positionally in the node's attribute
  order, so a node lists them in schema order. A SymInt size argument (dmc_prefill_cache's `capacity`)
  is an int attribute: TensorRT's Python plugins take no shape inputs, and an output size cannot come
  from a tensor's value, so an engine is built for one capacity;
- kernel ABI: TensorRT launches an AOT kernel with the input pointers, then the extra int32 arguments,
  then the output pointers (tensorrt.plugin.aot_impl: extra args "located after the tensor inputs and
  before the tensor outputs"), and null for the parameters it was not given (Triton's trailing scratch
  pointers, unused when their size is 0, which `compile_payload` checks). The zoo kernels declare
  (inputs, outputs, scalars), so the PTX's parameter declarations are permuted into TensorRT's order
  (`reorder_ptx_params`; the body names its parameters, so only the ABI changes);
- scalars: int kernel arguments are extra args (sizes, as TensorRT expressions of the input shapes);
  float ones (eps, dt limits, scales) cannot be, so they are baked into the PTX as constexprs: one PTX
  per attribute set. Block sizes derived from a size (BLOCK_D = next power of 2 of D) need that size
  static in the engine;
- tactics: `AotKernel.configs` lists constexpr configurations (index 0: what the op's launcher uses);
  TensorRT's tactic t >= 1 picks config t - 1, tactic 0 (no autotuning) config 0;
- workspace: a kernel that needs memory besides its outputs (mamba2_decode_step's fp32 gate) declares it
  as extra plugin outputs after the op's (`OpPlugin.workspace`), which the TensorRT-ready graph's node
  lists and nothing reads: TensorRT allocates them like any activation;
- ops whose CUDA path is several launches get a JIT implementation (`trtp.impl`) that runs the op's
  Triton path on torch tensors viewing TensorRT's buffers, on TensorRT's stream.
"""

import importlib
import inspect
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from typing import Callable

import torch

from zoo.errors import ZooError, require
from zoo.ops.registry import OPS_DIR, ZooOp, op_folders, zoo_ops

log = logging.getLogger("zoo.ops")

PLUGIN_NAMESPACE = "zoo"
PLUGIN_VERSION = "1"
TRITON_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64",
    torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1",
}  # fmt: skip
# trt.DataType member names; AutoTuneCombination spells FLOAT and HALF as FP32 and FP16
TENSORRT_TYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
    "INT32": torch.int32, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
AUTOTUNE_NAMES = {"FLOAT": "FP32", "HALF": "FP16"}


class PluginError(ZooError):
    """An op or input that has no TensorRT plugin form."""


# --- size expressions: one launch description, three readings (text, value, TensorRT) -----------------


@dataclass(frozen=True)
class Size:
    """An int expression over input dimensions, built with + - * // and `cdiv` / `size_max`. Leaves are
    dimensions ("dim": a label and, for TensorRT, (input index, axis)); operations on two ints fold."""

    op: str  # "dim" | "+" | "-" | "*" | "//" | "cdiv" | "max"
    args: tuple

    def __add__(self, other):
        return _apply("+", self, other)

    def __radd__(self, other):
        return _apply("+", other, self)

    def __sub__(self, other):
        return _apply("-", self, other)

    def __rsub__(self, other):
        return _apply("-", other, self)

    def __mul__(self, other):
        return _apply("*", self, other)

    def __rmul__(self, other):
        return _apply("*", other, self)

    def __floordiv__(self, other):
        return _apply("//", self, other)

    def __rfloordiv__(self, other):
        return _apply("//", other, self)

    def __str__(self) -> str:
        return size_text(self)


FOLD = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "//": lambda a, b: a // b,
    "cdiv": lambda a, b: -(-a // b), "max": max,
}  # fmt: skip


def _apply(op: str, a, b):
    if isinstance(a, int) and isinstance(b, int):
        return FOLD[op](a, b)
    if (op == "*" and a == 1) or (op == "+" and a == 0):
        return b
    if (op in ("*", "//", "cdiv") and b == 1) or (op in ("+", "-") and b == 0):
        return a
    return Size(op, (a, b))


def dim(label: str, source: tuple[int, int] | None = None) -> Size:
    return Size("dim", (label, source))


def cdiv(a, b):
    return _apply("cdiv", a, b)


def size_max(a, b):
    return _apply("max", a, b)


def product(sizes) -> int | Size:
    total = 1
    for size in sizes:
        total = total * size
    return total


def static(size, what: str) -> int:
    """`size` as an int, or a clear error where the AOT kernel needs it static (a constexpr block size)."""
    if not isinstance(size, int):
        raise PluginError(f"{what} must be a static size for the AOT kernel, got the symbolic {size_text(size)}")
    return size


def size_text(size) -> str:
    if isinstance(size, int):
        return str(size)
    if size.op == "dim":
        return size.args[0]
    a, b = (size_text(arg) for arg in size.args)
    if size.op in ("cdiv", "max"):
        return f"{size.op}({a}, {b})"
    return f"({a} {size.op} {b})"


def evaluate_size(text: str, values: dict[str, int]) -> int:
    """The value of a size expression's text at concrete values of its symbols."""
    return eval(text, {"__builtins__": {}, "cdiv": FOLD["cdiv"], "max": max}, dict(values))


def size_to_tensorrt(size, dims, trtp):
    """TensorRT's expression of `size`; `dims[(input, axis)]` is the ShapeExpr of a leaf. TensorRT's
    expressions take an int only on the right of an operator; cdiv and max are trtp functions."""
    if isinstance(size, int):
        return size
    if size.op == "dim":
        return dims[size.args[1]]
    a, b = (size_to_tensorrt(arg, dims, trtp) for arg in size.args)
    if size.op == "cdiv":
        return trtp.cdiv(a, b)
    if size.op == "max":
        return trtp.max(a, b) if not isinstance(a, int) else trtp.max(b, a)
    if isinstance(a, int):
        if size.op == "+":
            return b + a
        if size.op == "*":
            return b * a
        a = trtp.ShapeExpr(a)
    return FOLD[size.op](a, b)


# --- what an op folder declares ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a plugin: its schema name, shape (ints and `Size`s) and torch dtype."""

    name: str
    shape: tuple
    dtype: torch.dtype


@dataclass(frozen=True)
class Launch:
    """One launch of an AOT kernel: its grid (1 to 3 sizes), the kernel's non-pointer runtime parameters
    (int sizes become extra args, floats are baked in) and the values of its constexpr parameters."""

    grid: tuple
    scalars: dict
    constexprs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AotKernel:
    kernel: Callable[[], object]  # returns the @triton.jit function (importing triton only then)
    launch: Callable[[list, dict, dict], Launch]  # (inputs, attributes, config) -> Launch
    configs: Callable[[list, dict], list[dict]]  # tactic configs (constexprs, "num_warps"); [0] the launcher's


@dataclass(frozen=True)
class OpPlugin:
    op: str  # the zoo op name
    output_specs: Callable  # output_specs(shapes, dtypes, **attributes) -> [(shape, dtype)]
    aot: AotKernel | None = None
    jit_reason: str = ""  # why the op has no AOT kernel
    # ((name, spec(shapes, dtypes, **attributes) -> (shape, dtype)), ...): memory the AOT kernel needs
    # besides the op's outputs, declared as plugin outputs after them (an AOT launch gets no other buffer);
    # nothing in the graph reads them
    workspace: tuple = ()

    @property
    def zoo_op(self) -> ZooOp:
        return zoo_ops()[self.op]

    @property
    def plugin_id(self) -> str:
        return self.zoo_op.plugin_id


@dataclass(frozen=True)
class Argument:
    name: str
    tensor: bool
    attribute_type: type | None = None


def plugin_arguments(op: ZooOp) -> list[Argument]:
    """The op's schema arguments as plugin inputs (tensors, optional ones included) and attributes."""
    args = []
    for arg in op.overload._schema.arguments:
        type_ = arg.type
        inner = type_.getElementType() if isinstance(type_, torch.OptionalType) else type_
        if isinstance(inner, torch.TensorType):
            args.append(Argument(arg.name, True))
            continue
        scalar = {"int": int, "SymInt": int, "float": float, "str": str, "bool": bool}.get(str(type_))
        if scalar is None:
            raise PluginError(f"zoo op {op.name}: argument {arg.name} of type {type_} has no plugin attribute form")
        args.append(Argument(arg.name, False, scalar))
    return args


@cache
def plugins() -> dict[str, OpPlugin]:
    """The plugin of every op whose folder has a tensorrt_plugin.py, by op name."""
    found = {}
    for folder in op_folders():
        if (OPS_DIR / folder / "tensorrt_plugin.py").is_file():
            module = importlib.import_module(f"zoo.ops.{folder}.tensorrt_plugin")
            found |= {plugin.op: plugin for plugin in module.PLUGINS}
    return found


def ops_without_plugins() -> list[str]:
    return sorted(set(zoo_ops()) - set(plugins()))


def plugin_for(op_name: str) -> OpPlugin:
    if op_name not in plugins():
        raise PluginError(f"zoo op {op_name} has no TensorRT plugin (its folder has no tensorrt_plugin.py)")
    return plugins()[op_name]


# --- AOT payloads -----------------------------------------------------------------------------------------


def tensor_specs(op: OpPlugin, input_specs, symbolic: Callable) -> list[TensorSpec]:
    """TensorSpecs of the op's inputs from (shape, dtype) pairs; `symbolic(index, axis, entry)` gives the
    Size of a shape entry that is not an int."""
    names = [a.name for a in plugin_arguments(op.zoo_op) if a.tensor]
    if len(input_specs) != len(names):
        raise PluginError(f"zoo::{op.op} takes {len(names)} tensor inputs ({', '.join(names)}), got {len(input_specs)}")
    specs = []
    for i, (name, (shape, dtype)) in enumerate(zip(names, input_specs)):
        dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."))
        entries = tuple(s if isinstance(s, int) else symbolic(i, axis, s) for axis, s in enumerate(shape))
        specs.append(TensorSpec(name, entries, dtype))
    return specs


def output_tensor_specs(op: OpPlugin, inputs: list[TensorSpec], attrs: dict) -> list[TensorSpec]:
    """The plugin's outputs: the op's, then its workspace."""
    shapes, dtypes = [t.shape for t in inputs], [t.dtype for t in inputs]
    specs = op.output_specs(shapes, dtypes, **attrs) + [spec(shapes, dtypes, **attrs) for _, spec in op.workspace]
    return [TensorSpec(f"out{i}", tuple(shape), dtype) for i, (shape, dtype) in enumerate(specs)]


def config_index(tactic: int) -> int:
    return tactic - 1 if tactic > 0 else 0


@dataclass(frozen=True)
class KernelPlan:
    """Everything the compiler and TensorRT need for one (attribute set, dtypes, tactic)."""

    signature: dict
    constexprs: dict
    num_warps: int
    grid: tuple
    extra_names: tuple
    extra_sizes: tuple
    abi_order: tuple  # the kernel's runtime parameters in TensorRT's order (inputs, extras, outputs)


def kernel_plan(op: OpPlugin, inputs: list[TensorSpec], attrs: dict, tactic: int = 0) -> KernelPlan:
    if op.aot is None:
        raise PluginError(f"zoo::{op.op} has no AOT kernel ({op.jit_reason}); its plugin is a JIT trtp.impl")
    configs = op.aot.configs(inputs, attrs)
    config = dict(configs[min(config_index(tactic), len(configs) - 1)])
    num_warps = config.pop("num_warps", 4)
    launch = op.aot.launch(inputs, attrs, config)
    outputs = output_tensor_specs(op, inputs, attrs)
    kernel = op.aot.kernel()
    parameters = inspect.signature(kernel.fn).parameters
    pointers = iter([(True, t) for t in inputs] + [(False, t) for t in outputs])
    signature, constexprs = {}, {**launch.constexprs, **config}
    input_params, output_params, extra_names, extra_sizes = [], [], [], []
    for name, param in parameters.items():
        if "constexpr" in str(param.annotation):
            signature[name] = "constexpr"
            if name not in constexprs:
                raise PluginError(f"zoo::{op.op}: no value for constexpr {name} of {kernel.fn.__name__}")
        elif name.endswith("_ptr"):
            is_input, tensor = next(pointers, (None, None))
            if tensor is None:
                raise PluginError(f"zoo::{op.op}: {kernel.fn.__name__} has more pointers than inputs and outputs")
            signature[name] = f"*{TRITON_TYPES[tensor.dtype]}"
            (input_params if is_input else output_params).append(name)
        else:
            value = launch.scalars[name]
            if isinstance(value, float):  # TensorRT passes only int extra args: bake the value in
                signature[name], constexprs[name] = "constexpr", value
            else:
                signature[name] = "i32"
                extra_names.append(name)
                extra_sizes.append(value)
    if next(pointers, None) is not None:
        raise PluginError(f"zoo::{op.op}: {kernel.fn.__name__} has fewer pointers than inputs and outputs")
    return KernelPlan(
        signature, constexprs, num_warps, tuple(launch.grid), tuple(extra_names), tuple(extra_sizes),
        tuple(input_params + extra_names + output_params),
    )  # fmt: skip


def reorder_ptx_params(ptx: str, kernel_name: str, declared: list[str], wanted: list[str]) -> str:
    """The PTX with the first len(declared) parameters of `.entry kernel_name` (the kernel's runtime
    parameters in declaration order) declared in the order `wanted` instead; the rest (Triton's scratch
    pointers) stay last. The body reads parameters by name, so only the launch ABI changes."""
    match = re.search(rf"\.entry {re.escape(kernel_name)}\(\s*(.*?)\s*\)", ptx, re.S)
    if match is None:
        raise PluginError(f"no .entry {kernel_name} in the PTX")
    params = [p.strip() for p in match.group(1).split(",")]
    if len(params) < len(declared):
        raise PluginError(f"{kernel_name} declares {len(params)} PTX parameters, expected at least {len(declared)}")
    order = [declared.index(name) for name in wanted]
    reordered = [params[i] for i in order] + params[len(declared) :]
    return ptx[: match.start(1)] + ",\n\t".join(reordered) + ptx[match.end(1) :]


@cache
def _compile(fn, signature: tuple, constexprs: tuple, num_warps: int, capability: int):
    """(kernel name, PTX, shared bytes) of a Triton kernel compiled for sm_<capability>."""
    import triton
    from triton.backends.compiler import GPUTarget

    from zoo.ops.triton_aot import _jit_function

    source = triton.compiler.ASTSource(fn=_jit_function(fn), signature=dict(signature), constexprs=dict(constexprs))
    options = {"num_warps": num_warps, "num_stages": 2, "enable_fp_fusion": True}
    kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    meta = kernel.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise PluginError(f"{meta.name} uses Triton scratch memory, which a TensorRT AOT launch does not provide")
    return meta.name, kernel.asm["ptx"], meta.shared


def compile_payload(op: OpPlugin, inputs: list[TensorSpec], attrs: dict, arch: str = "sm_90", tactic: int = 0):
    """(plan, kernel name, PTX in TensorRT's parameter order, shared bytes)."""
    plan = kernel_plan(op, inputs, attrs, tactic)
    capability = int(arch.removeprefix("sm_"))
    fn = op.aot.kernel()
    name, ptx, shared = _compile(
        fn, tuple(plan.signature.items()), tuple(sorted(plan.constexprs.items())), plan.num_warps, capability
    )
    declared = [n for n, t in plan.signature.items() if t != "constexpr"]
    return plan, name, reorder_ptx_params(ptx, name, declared, list(plan.abi_order)), shared


def _payload(request: dict) -> dict:
    op = plugin_for(request["op"])
    inputs = tensor_specs(op, request["inputs"], lambda i, axis, label: dim(str(label)))
    plan, name, ptx, shared = compile_payload(op, inputs, request["attrs"], request["arch"], request["tactic"])
    return {
        "op": op.op,
        "kernel_name": name,
        "ptx": ptx,
        "target": request["arch"],
        "tactic": request["tactic"],
        "grid": [size_text(s) for s in plan.grid],
        "block": [plan.num_warps * 32, 1, 1],
        "shared_mem": shared,
        "extra_arg_names": list(plan.extra_names),
        "extra_args": [size_text(s) for s in plan.extra_sizes],
        "constexprs": plan.constexprs,
        "param_order": list(plan.abi_order),
    }


def aot_payloads(requests: list[dict]) -> list[dict]:
    """`aot_payload` for several requests; under Triton's interpreter (TRITON_INTERPRET=1, the tests) the
    compilation runs in one child process without it, as zoo.ops.triton_aot.compile_all does."""
    requests = [{"arch": "sm_90", "tactic": 0, **r} for r in requests]
    if os.environ.get("TRITON_INTERPRET") != "1":
        return [_payload(r) for r in requests]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, "-m", "zoo.ops.tensorrt_plugin"], input=json.dumps(requests), env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    if child.returncode != 0:
        raise PluginError(f"AOT compilation failed: {(child.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(child.stdout)


def aot_payload(op_name: str, input_specs, attrs: dict, arch: str = "sm_90", tactic: int = 0) -> dict:
    """The AOT implementation of zoo::<op_name> for inputs given as (shape, dtype) pairs in schema order
    (a shape entry is an int, or a str naming a symbolic size): kernel name, PTX for `arch` with its
    parameters in TensorRT's order, grid and extra args as expression text over the symbols, block, shared
    memory, the constexprs (floats baked in) and the parameter order. Needs triton, not TensorRT."""
    request = {"op": op_name, "inputs": [[list(s), str(d).removeprefix("torch.")] for s, d in input_specs]}
    return aot_payloads([{**request, "attrs": attrs, "arch": arch, "tactic": tactic}])[0]


# --- the functions tensorrt.plugin's decorators take ------------------------------------------------------


def _function(name: str, parameters: list, returns, body: Callable) -> Callable:
    """A function with the given signature (which TensorRT's decorators inspect) that calls
    body(arguments by name)."""
    signature = inspect.Signature(parameters, return_annotation=returns)

    def function(*args, **kwargs):
        return body(signature.bind(*args, **kwargs).arguments)

    function.__signature__ = signature
    function.__name__ = function.__qualname__ = name
    return function


def _parameters(op: ZooOp, tensor_annotation, tail: list[tuple[str, object]]) -> list[inspect.Parameter]:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [
        inspect.Parameter(a.name, kind, annotation=tensor_annotation if a.tensor else a.attribute_type)
        for a in plugin_arguments(op)
    ]
    return params + [inspect.Parameter(name, kind, annotation=annotation) for name, annotation in tail]


def _split(op: ZooOp, arguments: dict) -> tuple[list, dict]:
    args = plugin_arguments(op)
    return [arguments[a.name] for a in args if a.tensor], {a.name: arguments[a.name] for a in args if not a.tensor}


def _desc_specs(plugin: OpPlugin, descs: list, static_dims: bool) -> tuple[list[TensorSpec], dict]:
    """TensorSpecs of TensorDescs (Size leaves for their dimensions, ints for constant ones when
    `static_dims`), and the ShapeExprs of the leaves."""
    exprs = {}

    def symbolic(i, axis, expr):
        if static_dims and not expr.is_fake and expr.is_constant:
            return int(expr.constant_value())
        exprs[(i, axis)] = expr
        return dim(f"{names[i]}[{axis}]", (i, axis))

    names = [a.name for a in plugin_arguments(plugin.zoo_op) if a.tensor]
    specs = [(tuple(d.shape_expr), TENSORRT_TYPES[d.dtype.name]) for d in descs]
    return tensor_specs(plugin, specs, symbolic), exprs


def plugin_functions(plugin: OpPlugin, trt, trtp) -> dict[str, Callable]:
    """The functions for trtp.register, trtp.autotune and trtp.aot_impl (AOT ops) or trtp.impl (JIT ops),
    with the signatures those decorators validate: inputs annotated trtp.TensorDesc (trtp.Tensor in impl),
    then the attributes with their Python types, then outputs / stream / tactic."""
    op = plugin.zoo_op
    n_outputs = len(op.overload._schema.returns) + len(plugin.workspace)

    def register(arguments):
        descs, attrs = _split(op, arguments)
        inputs, exprs = _desc_specs(plugin, descs, static_dims=False)
        outputs = []
        for spec in output_tensor_specs(plugin, inputs, attrs):
            shape = tuple(size_to_tensorrt(s, exprs, trtp) for s in spec.shape)
            trt_dtype = getattr(trt.DataType, next(k for k, v in TENSORRT_TYPES.items() if v == spec.dtype))
            outputs.append(trtp.from_shape_expr(shape, trt_dtype))
        return tuple(outputs)

    def autotune(arguments):
        descs, attrs = _split(op, arguments)
        io_types = ",".join(AUTOTUNE_NAMES.get(d.dtype.name, d.dtype.name) for d in [*descs, *arguments["outputs"]])
        tactics = None
        if plugin.aot is not None:
            inputs, _ = _desc_specs(plugin, descs, static_dims=True)
            tactics = list(range(1, len(plugin.aot.configs(inputs, attrs)) + 1))
        return [trtp.AutoTuneCombination(io_types, "LINEAR", tactics)]

    def aot_impl(arguments):
        descs, attrs = _split(op, arguments)
        inputs, exprs = _desc_specs(plugin, descs, static_dims=True)
        plan, name, ptx, shared = compile_payload(plugin, inputs, attrs, "sm_90", arguments["tactic"])
        launch = trtp.KernelLaunchParams()
        for axis, size in zip(("grid_x", "grid_y", "grid_z"), plan.grid):
            setattr(launch, axis, size_to_tensorrt(size, exprs, trtp))
        launch.block_x = plan.num_warps * 32
        launch.shared_mem = shared
        extra = trtp.SymIntExprs(len(plan.extra_sizes))
        for i, size in enumerate(plan.extra_sizes):
            extra[i] = trtp.SymInt32(size_to_tensorrt(size, exprs, trtp))
        return name, ptx, launch, extra

    def impl(arguments):
        tensors, attrs = _split(op, arguments)
        with torch.cuda.stream(torch.cuda.ExternalStream(arguments["stream"])):
            results = run_jit(plugin, [torch_view(t) for t in tensors], attrs)
            for out, result in zip(arguments["outputs"], results):
                torch_view(out).copy_(result)

    descs = trtp.TensorDesc
    functions = {
        "register": _function(f"{op.name}_register", _parameters(op, descs, []), tuple[(descs,) * n_outputs], register),
        "autotune": _function(
            f"{op.name}_autotune", _parameters(op, descs, [("outputs", tuple[descs])]),
            list[trtp.AutoTuneCombination], autotune,
        ),
    }  # fmt: skip
    if plugin.aot is not None:
        returns = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]
        tail = [("outputs", tuple[descs]), ("tactic", int)]
        functions["aot_impl"] = _function(f"{op.name}_aot_impl", _parameters(op, descs, tail), returns, aot_impl)
    else:
        tail = [("outputs", tuple[trtp.Tensor]), ("stream", int)]
        functions["impl"] = _function(f"{op.name}_impl", _parameters(op, trtp.Tensor, tail), None, impl)
    return functions


def run_jit(plugin: OpPlugin, tensors: list, attrs: dict) -> tuple:
    """The op's Triton implementation on torch tensors (the JIT plugin's body), outputs as a tuple."""
    from zoo.ops.kernels import kernel_choice

    with kernel_choice("triton", ops=[plugin.op]):
        results = plugin.zoo_op.overload(*tensors, *attrs.values())
    return results if isinstance(results, tuple) else (results,)


def torch_view(tensor) -> torch.Tensor:
    """A torch tensor over a trtp.Tensor's CUDA buffer. trtp.Tensor's own __cuda_array_interface__ refuses
    bf16, so the interface is built here from its pointer, shape and strides (bf16 read as int16)."""
    dtype = TENSORRT_TYPES[tensor.dtype.name]
    carrier = torch.int16 if dtype == torch.bfloat16 else dtype
    itemsize = torch.empty((), dtype=carrier).element_size()
    typestr = {torch.bool: "|b1"}.get(carrier) or torch.empty((), dtype=carrier).numpy().dtype.str

    class Interface:
        __cuda_array_interface__ = {
            "shape": tuple(tensor.shape), "typestr": typestr, "data": (tensor.data_ptr, False), "version": 3,
            "strides": tuple(s * itemsize for s in tensor.strides),
        }  # fmt: skip

    view = torch.as_tensor(Interface(), device="cuda")
    return view.view(torch.bfloat16) if dtype == torch.bfloat16 else view


def register_plugins(ops: list[str] | None = None) -> list[str]:
    """Register the TensorRT plugin of each op (default: every op that has one) with tensorrt.plugin;
    returns the plugin ids. Raises MissingDependencyError when TensorRT is not installed."""
    require("tensorrt", "tensorrt")
    import tensorrt as trt
    import tensorrt.plugin as trtp

    chosen = [plugin_for(name) for name in ops] if ops is not None else list(plugins().values())
    if ops is None and ops_without_plugins():
        log.warning("zoo ops without a TensorRT plugin: %s", ", ".join(ops_without_plugins()))
    for plugin in chosen:
        functions = plugin_functions(plugin, trt, trtp)
        trtp.register(plugin.plugin_id)(functions["register"])
        trtp.autotune(plugin.plugin_id)(functions["autotune"])
        if "aot_impl" in functions:
            trtp.aot_impl(plugin.plugin_id)(functions["aot_impl"])
        else:
            trtp.impl(plugin.plugin_id)(functions["impl"])
    return [plugin.plugin_id for plugin in chosen]


if __name__ == "__main__":
    print(json.dumps(aot_payloads(json.loads(sys.stdin.read()))))
