"""The TensorRT face of the zoo ops (zoo.ops.tensorrt_plugin), tested without TensorRT: each op's shared
shape logic against its fake kernel, the AOT payloads (sm_90 PTX, grid and extra args) against what the
op's Triton launcher does, and the generated plugin functions against the schema that tensorrt.plugin's
decorators validate. The real TensorRT is not installed here: `StandInTrtp` below records what is
decorated and applies the same signature rules as TensorRT's tensorrt/plugin/_validate.py. Only the last
test uses TensorRT itself (marked, skipped where it or a GPU is missing)."""

import enum
import inspect
import re
import types
import typing

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import zoo.ops.tensorrt_plugin as tp
from export.onnx_ops import op_type
from zoo.errors import MissingDependencyError
from zoo.ops.moe_grouped import moe_schedule_ref
from zoo.ops.registry import zoo_ops
from zoo.ops.triton_aot import ptxas_resources

BATCH, LENGTH = 3, 7  # no static size of the cases below equals either, so they name the symbolic axes
SYMBOLS = {BATCH: "B", LENGTH: "L"}
AOT_OPS = ["rms_norm", "add_rms_norm", "gated_rms_norm", "swiglu", "rope", "causal_conv1d", "causal_conv1d_update",
           "ssd_state_update", "ssd_chunk_scan", "dmc_decode_attention", "dmc_prefill_cache",
           "mamba2_decode_step", "moe_routed_gate_up", "moe_routed_down", "moe_schedule", "moe_grouped_gate_up",
           "moe_grouped_down"]  # fmt: skip
JIT_OPS = ["moe_experts", "moe_layer"]


def rand(*shape, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(dtype)


def case(op: str, b: int, L: int, dtype: torch.dtype = torch.float32) -> tuple:
    """Arguments of `op` in schema order at batch b and length L, activations in `dtype`."""
    f32, i64 = torch.float32, torch.int64
    if op == "rms_norm":
        return rand(b, L, 8, dtype=dtype), rand(8, dtype=dtype), 1e-5
    if op == "add_rms_norm":
        return rand(b, L, 8, dtype=dtype), rand(b, L, 8, dtype=dtype), rand(8, dtype=dtype), 1e-6
    if op == "gated_rms_norm":
        return rand(b, L, 8, dtype=dtype), rand(b, L, 8, dtype=dtype), rand(8, dtype=dtype), 4, 1e-5
    if op == "swiglu":
        return rand(b, L, 12, dtype=dtype), rand(b, L, 12, dtype=dtype)
    if op == "rope":
        return rand(b, 2, L, 8, dtype=dtype), rand(b, 1, L, 8, dtype=dtype), rand(b, 1, L, 8, dtype=dtype)
    if op == "causal_conv1d":
        bias = rand(6, dtype=dtype) if L != 5 else None  # absent in one SHAPE_CASE, present at LENGTH
        return rand(b, L, 6, dtype=dtype), rand(6, 4, dtype=dtype), bias, torch.full((b,), L, dtype=i64)
    if op == "causal_conv1d_update":
        return rand(b, 6, 4, dtype=dtype), rand(b, 6, dtype=dtype), rand(6, 4, dtype=dtype), rand(6, dtype=dtype)
    if op == "ssd_state_update":
        heads = [rand(4, dtype=dtype) for _ in range(4)]
        A, D, dt_bias = -heads[0].abs(), heads[1], heads[2]
        state, x, dt = rand(b, 4, 8, 6, dtype=dtype), rand(b, 4, 8, dtype=dtype), rand(b, 4, dtype=dtype)
        return state, x, dt, A, rand(b, 2, 6, dtype=dtype), rand(b, 2, 6, dtype=dtype), D, dt_bias, 0.0, float("inf")
    if op == "ssd_chunk_scan":
        x, dt, A = rand(b, L, 4, 8, dtype=dtype), rand(b, L, 4, dtype=dtype).abs(), -rand(4, dtype=dtype).abs()
        B, C = rand(b, L, 2, 6, dtype=dtype), rand(b, L, 2, 6, dtype=dtype)
        return x, dt, A, B, C, rand(b, 4, 8, 6, dtype=dtype), 4
    if op == "dmc_prefill_cache":
        alpha = (rand(b, 2, L) > 0).float()
        pooled = [rand(b, 2, L, 16, dtype=dtype), rand(b, 2, L, 16)]
        slots = [rand(b, 2, L, 8, dtype=dtype), rand(b, 2, L, 8, dtype=dtype)]
        return alpha, rand(b, 2, L), *pooled, rand(b, 2, L), *slots, torch.full((b,), L, dtype=i64), L + 2, 2
    if op == "dmc_decode_attention":
        tokens = [rand(b, 4, 8, dtype=dtype), rand(b, 2, 8, dtype=dtype), rand(b, 2, 8, dtype=dtype)]
        angles = [rand(b, 8, dtype=dtype), rand(b, 8, dtype=dtype), torch.arange(b, dtype=i64) + L]
        cache = [rand(b, 2, L, 8, dtype=dtype), rand(b, 2, L, 8, dtype=dtype), torch.full((b, 2), 2, dtype=i64)]
        state = [rand(b, 2, 8, dtype=f32), rand(b, 2, 8, dtype=f32), rand(b, 2).abs() + 1, torch.ones(b, 2)]
        ring = [rand(b, 2, 2, 8), rand(b, 2, 2, 8), rand(b, 2, 2)]
        return *tokens, *angles, *cache, *state, *ring, 0.5, 2, 0.35, 0
    if op == "moe_experts":
        x, logits = rand(b * L, 8, dtype=dtype), rand(b * L, 4, dtype=dtype)
        return x, logits, rand(4, 12, 8, dtype=dtype), rand(4, 8, 6, dtype=dtype), 2, "softmax-topk", "silu", True
    if op == "moe_layer":
        x, router = rand(b * L, 8, dtype=dtype), rand(4, 8, dtype=dtype)
        return x, router, rand(4, 12, 8, dtype=dtype), rand(4, 8, 6, dtype=dtype), 2, "topk-softmax", "silu", True
    if op == "moe_routed_gate_up":
        x, logits = rand(b * L, 8, dtype=dtype), rand(b * L, 4, dtype=dtype)
        return x, logits, rand(4, 12, 8, dtype=dtype), 2, "softmax-topk", "silu", True
    if op == "moe_routed_down":
        h, logits = rand(b * L, 2, 6, dtype=dtype), rand(b * L, 4, dtype=dtype)
        return h, logits, rand(4, 8, 6, dtype=dtype), 2, "topk-softmax"
    if op in ("moe_schedule", "moe_grouped_gate_up", "moe_grouped_down"):  # 2*b*L slots over 4 experts
        logits = rand(b * L, 4, dtype=dtype)
        if op == "moe_schedule":
            return logits, 2, "softmax-topk"
        weights, _, sorted_slots, block_experts = moe_schedule_ref(logits, 2, "softmax-topk")
        if op == "moe_grouped_gate_up":
            return (
                rand(b * L, 8, dtype=dtype),
                rand(4, 12, 8, dtype=dtype),
                sorted_slots,
                block_experts,
                2,
                "silu",
                True,
            )
        return (
            rand(sorted_slots.shape[0], 6, dtype=dtype),
            rand(4, 8, 6, dtype=dtype),
            sorted_slots,
            block_experts,
            weights,
        )
    if op == "mamba2_decode_step":  # 4 heads of 8, 2 groups of state 6: conv_dim 32 + 24
        window, xbc, conv_weight = rand(b, 56, 4, dtype=dtype), rand(b, 56, dtype=dtype), rand(56, 4, dtype=dtype)
        bias = rand(56, dtype=dtype) if L != 5 else None  # absent in one SHAPE_CASE, present at LENGTH
        heads = [-rand(4).abs(), rand(4), rand(4)]
        state, z, dt = rand(b, 4, 8, 6), rand(b, 32, dtype=dtype), rand(b, 4, dtype=dtype)
        return window, state, xbc, z, dt, conv_weight, bias, *heads, rand(32, dtype=dtype), 0.0, float("inf"), 1e-5
    raise KeyError(op)


def split(op: str, args: tuple) -> tuple[list, dict]:
    """(tensor arguments, attributes by name) of a case, as the plugin sees them."""
    schema = tp.plugin_arguments(zoo_ops()[op])
    return [a for a, s in zip(args, schema) if s.tensor], {s.name: a for a, s in zip(args, schema) if not s.tensor}


def test_every_op_has_a_plugin_named_like_its_onnx_node():
    assert tp.ops_without_plugins() == []
    for name, plugin in tp.plugins().items():
        assert plugin.plugin_id == f"zoo::{op_type(name)}" == zoo_ops()[name].plugin_id
    assert sorted(n for n, p in tp.plugins().items() if p.aot is not None) == sorted(AOT_OPS)
    assert sorted(n for n, p in tp.plugins().items() if p.aot is None) == sorted(JIT_OPS)


SHAPE_CASES = [(1, 1, torch.float32), (3, 5, torch.float16), (3, 7, torch.bfloat16), (1, 17, torch.float32)]


@pytest.mark.parametrize("op", AOT_OPS + JIT_OPS)
def test_output_specs_match_the_fake_kernel(op):
    plugin = tp.plugins()[op]
    for b, L, dtype in SHAPE_CASES:
        for shape_env in (None, ShapeEnv()):  # concrete sizes, then every size a symbol
            mode = FakeTensorMode(shape_env=shape_env, static_shapes=shape_env is None)
            args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in case(op, b, L, dtype)]
            with mode:
                outputs = zoo_ops()[op].overload(*args)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            tensors, attrs = split(op, args)
            shapes = [None if t is None else t.shape for t in tensors]
            specs = plugin.output_specs(shapes, [None if t is None else t.dtype for t in tensors], **attrs)
            assert len(specs) == len(outputs)
            for out, (shape, dtype_) in zip(outputs, specs):
                assert [str(s) for s in out.shape] == [str(s) for s in shape] and out.dtype == dtype_, (op, b, L)
            if shape_env is not None and b > 1:
                assert any(isinstance(s, torch.SymInt) for out in outputs for s in out.shape)


def test_the_mamba2_decode_step_plugin_declares_its_gate_workspace_after_the_outputs():
    tensors, attrs = split("mamba2_decode_step", case("mamba2_decode_step", BATCH, 1, torch.bfloat16))
    plugin = tp.plugins()["mamba2_decode_step"]
    inputs = tp.tensor_specs(plugin, symbolic_specs(tensors), lambda i, axis, label: tp.dim(label))
    specs = tp.output_tensor_specs(plugin, inputs, attrs)
    op_outputs = plugin.output_specs([t.shape for t in inputs], [t.dtype for t in inputs], **attrs)
    assert [(s.shape, s.dtype) for s in specs[:3]] == [(tuple(shape), dtype) for shape, dtype in op_outputs]
    assert [str(size) for size in specs[3].shape] == ["B", "32"] and specs[3].dtype == torch.float32
    # the kernel's pointers: the 11 inputs, the 3 outputs, then the workspace
    plan = tp.kernel_plan(plugin, inputs, attrs)
    assert plan.abi_order[-4:] == ("out_ptr", "new_window_ptr", "new_state_ptr", "workspace_ptr")
    assert plan.signature["workspace_ptr"] == "*fp32" and plan.signature["out_ptr"] == "*bf16"


# --- AOT payloads against the Triton launchers ------------------------------------------------------------


def symbolic_specs(tensors) -> list:
    return [([SYMBOLS.get(s, s) for s in t.shape], t.dtype) for t in tensors]


PAYLOAD_REQUESTS = [(op, 0) for op in AOT_OPS] + [("swiglu", 1), ("swiglu", 2), ("swiglu", 3)]


@pytest.fixture(scope="module")
def payloads():
    requests = []
    for op, tactic in PAYLOAD_REQUESTS:
        tensors, attrs = split(op, case(op, BATCH, LENGTH))
        inputs = [[list(s), str(d).removeprefix("torch.")] for s, d in symbolic_specs(tensors)]
        requests.append({"op": op, "inputs": inputs, "attrs": attrs, "tactic": tactic})
    return dict(zip(PAYLOAD_REQUESTS, tp.aot_payloads(requests)))


class LaunchRecorder:
    """Stands in for a @triton.jit kernel: records the grid and the arguments of `kernel[grid](...)`."""

    def __init__(self, kernel):
        self.signature, self.calls = inspect.signature(kernel.fn), []

    def __getitem__(self, grid):
        def launch(*args, num_warps=4, **kwargs):
            self.calls.append((tuple(grid), self.signature.bind(*args, **kwargs).arguments, num_warps))

        return launch


@pytest.mark.parametrize("op", AOT_OPS)
def test_aot_payload_matches_the_triton_launcher(op, payloads, monkeypatch):
    payload = payloads[(op, 0)]
    kernel = tp.plugins()[op].aot.kernel()
    module = inspect.getmodule(kernel.fn)
    recorder = LaunchRecorder(kernel)
    monkeypatch.setattr(module, kernel.fn.__name__, recorder)
    args = case(op, BATCH, LENGTH)
    getattr(module, f"{op}_triton")(*args)
    ((grid, arguments, num_warps),) = recorder.calls
    values = {"B": BATCH, "L": LENGTH}

    assert payload["kernel_name"] in payload["ptx"] and ".target sm_90" in payload["ptx"]
    assert [tp.evaluate_size(g, values) for g in payload["grid"]] == list(grid)
    assert payload["block"] == [32 * num_warps, 1, 1] and payload["shared_mem"] >= 0
    for name, expr in zip(payload["extra_arg_names"], payload["extra_args"]):
        assert tp.evaluate_size(expr, values) == arguments[name], name
    for name, value in payload["constexprs"].items():  # block sizes, modes, and the float scalars baked in
        assert value == (pytest.approx(arguments[name]) if isinstance(value, float) else arguments[name]), name
    tensors, _ = split(op, args)
    n_in, n_extra = len(tensors), len(payload["extra_arg_names"])
    order = payload["param_order"]
    assert order[n_in : n_in + n_extra] == payload["extra_arg_names"]
    assert all(p.endswith("_ptr") for p in order[:n_in] + order[n_in + n_extra :])


def entry_params(ptx: str, name: str) -> list[str]:
    header = re.search(rf"\.entry {name}\((.*?)\)", ptx, re.S).group(1)
    return re.findall(rf"{name}_param_(\d+)", header)


def test_ptx_parameters_are_in_tensorrt_order_and_assemble(payloads):
    payload = payloads[("rms_norm", 0)]
    # rms_norm_kernel(x_ptr, weight_ptr, out_ptr, D, ...): TensorRT passes x, weight, D, out, then scratch
    assert payload["param_order"] == ["x_ptr", "weight_ptr", "D", "out_ptr"]
    assert entry_params(payload["ptx"], payload["kernel_name"]) == ["0", "1", "3", "2", "4", "5"]
    registers, _ = ptxas_resources(payload["ptx"])
    assert registers is not None, "ptxas rejects the reordered PTX"


def test_swiglu_tactics_pick_their_block_sizes(payloads):
    blocks = [payloads[("swiglu", t)]["constexprs"]["BLOCK"] for t in range(4)]
    assert blocks == [1024, 1024, 2048, 512]  # tactic 0 (no autotuning) and 1 are the launcher's config
    for tactic, block in zip(range(4), blocks):
        payload = payloads[("swiglu", tactic)]
        assert payload["grid"] == [f"cdiv(((B * L) * 12), {block})"] and ".target sm_90" in payload["ptx"]
    assert payloads[("swiglu", 2)]["block"] == [256, 1, 1]


def test_jit_ops_have_no_aot_payload():
    tensors, attrs = split("moe_experts", case("moe_experts", 1, 2))
    inputs = [(list(t.shape), t.dtype) for t in tensors]
    with pytest.raises(tp.PluginError, match="zoo::moe_experts has no AOT kernel"):
        tp.kernel_plan(tp.plugins()["moe_experts"], tp.tensor_specs(tp.plugins()["moe_experts"], inputs, None), attrs)


def test_jit_body_runs_the_triton_path():
    args = case("causal_conv1d", 2, 5)
    tensors, attrs = split("causal_conv1d", args)
    results = tp.run_jit(tp.plugins()["causal_conv1d"], tensors, attrs)
    expected = zoo_ops()["causal_conv1d"].reference(*args)
    for actual, reference in zip(results, expected):
        torch.testing.assert_close(actual, reference, atol=1e-4, rtol=1e-3)


# --- the generated functions against tensorrt.plugin's schema ---------------------------------------------


class DataType(enum.Enum):
    FLOAT, HALF, BF16, INT64, INT32, INT8, UINT8, BOOL = range(8)


class ShapeExpr:
    """Like TensorRT's: + - * // with the int on the right only; records the expression's text and value."""

    def __init__(self, value: int, text: str | None = None):
        self.value, self.text, self.is_fake = value, text or str(value), False

    @property
    def is_constant(self):
        return self.text == str(self.value)

    def constant_value(self):
        return self.value

    def _op(self, symbol, other, fn):
        if not isinstance(other, (int, ShapeExpr)):
            return NotImplemented
        other = other if isinstance(other, ShapeExpr) else ShapeExpr(other)
        return ShapeExpr(fn(self.value, other.value), f"({self.text} {symbol} {other.text})")

    def __add__(self, other):
        return self._op("+", other, lambda a, b: a + b)

    def __sub__(self, other):
        return self._op("-", other, lambda a, b: a - b)

    def __mul__(self, other):
        return self._op("*", other, lambda a, b: a * b)

    def __floordiv__(self, other):
        return self._op("//", other, lambda a, b: a // b)


class StandInTrtp(types.SimpleNamespace):
    """Records the functions decorated by register / autotune / aot_impl / impl after checking them with
    the rules of TensorRT's tensorrt/plugin/_validate.py: annotated TensorDesc inputs first, then attributes
    of a serializable type without defaults; the other functions take the same inputs and attributes, then
    (outputs, tactic) / (outputs) / (outputs, stream), with the documented return annotations."""

    class TensorDesc:
        def __init__(self, shape_expr=None, dtype=None):
            self.shape_expr, self.dtype = shape_expr, dtype

    class Tensor:
        pass

    class SymExprs(list):
        pass

    class SymIntExprs(SymExprs):
        def __init__(self, length):
            super().__init__([None] * length)

    class SymInt32:
        def __init__(self, value):
            self.expr = value

    class KernelLaunchParams:
        def __setattr__(self, name, value):
            assert name in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem"), name
            super().__setattr__(name, value)

    class AutoTuneCombination:
        def __init__(self, io_types, layouts, tactics):
            self.io_types, self.layouts, self.tactics = io_types, layouts, tactics

    def __init__(self):
        super().__init__(registered={})

    @staticmethod
    def ShapeExpr(value):  # noqa: N802 (TensorRT's name)
        return ShapeExpr(value)

    @staticmethod
    def cdiv(a, b):
        return a._op("cdiv", b, lambda x, y: -(-x // y))

    @staticmethod
    def from_shape_expr(shape, dtype):
        return StandInTrtp.TensorDesc(tuple(s if isinstance(s, ShapeExpr) else ShapeExpr(s) for s in shape), dtype)

    def register(self, plugin_id):
        def decorate(fn):
            params = list(inspect.signature(fn).parameters.values())
            assert all(p.annotation is not inspect.Parameter.empty and p.default is inspect.Parameter.empty
                       for p in params)  # fmt: skip
            tensors = [p.name for p in params if p.annotation is self.TensorDesc]
            attrs = {p.name: p.annotation for p in params[len(tensors) :]}
            assert all(t in (int, float, str, bool) for t in attrs.values()) and not {
                "outputs",
                "stream",
                "tactic",
            } & set(attrs)
            returns = inspect.signature(fn).return_annotation
            assert typing.get_origin(returns) is tuple and all(a is self.TensorDesc for a in typing.get_args(returns))
            self.registered[plugin_id] = {"register": fn, "tensors": tensors, "attrs": attrs}
            return fn

        return decorate

    def _check(self, plugin_id, fn, kind, tail):
        entry = self.registered[plugin_id]
        params = inspect.signature(fn).parameters
        assert list(params) == entry["tensors"] + list(entry["attrs"]) + tail, (plugin_id, kind, list(params))
        tensor_type = self.Tensor if kind == "impl" else self.TensorDesc
        for name in entry["tensors"]:
            assert params[name].annotation is tensor_type
        for name, type_ in entry["attrs"].items():
            assert params[name].annotation is type_
        outputs = params["outputs"].annotation
        assert typing.get_origin(outputs) is tuple and typing.get_args(outputs) == (tensor_type,)
        entry[kind] = fn
        return fn

    def autotune(self, plugin_id):
        def decorate(fn):
            returns = inspect.signature(fn).return_annotation
            assert typing.get_origin(returns) is list and typing.get_args(returns) == (self.AutoTuneCombination,)
            return self._check(plugin_id, fn, "autotune", ["outputs"])

        return decorate

    def aot_impl(self, plugin_id):
        def decorate(fn):
            returns = typing.get_args(inspect.signature(fn).return_annotation)
            assert [typing.get_args(r) for r in returns[:2]] == [(str, bytes), (str, bytes)]
            assert returns[2] is self.KernelLaunchParams and issubclass(returns[3], self.SymExprs)
            assert inspect.signature(fn).parameters["tactic"].annotation is int
            return self._check(plugin_id, fn, "aot_impl", ["outputs", "tactic"])

        return decorate

    def impl(self, plugin_id):
        def decorate(fn):
            assert inspect.signature(fn).return_annotation is None
            assert inspect.signature(fn).parameters["stream"].annotation is int
            return self._check(plugin_id, fn, "impl", ["outputs", "stream"])

        return decorate


TRT_NAMES = {dtype: name for name, dtype in tp.TENSORRT_TYPES.items()}


def stand_in_descs(op: str, tensors) -> list:
    """TensorDescs of the inputs: the batch and length axes symbolic, the other sizes constants."""
    names = [a.name for a in tp.plugin_arguments(zoo_ops()[op]) if a.tensor]
    descs = []
    for name, t in zip(names, tensors):
        shape = tuple(ShapeExpr(s, f"{name}[{i}]") if s in SYMBOLS else ShapeExpr(s) for i, s in enumerate(t.shape))
        descs.append(StandInTrtp.TensorDesc(shape, DataType[TRT_NAMES[t.dtype]]))
    return descs


@pytest.mark.parametrize("op", AOT_OPS + JIT_OPS)
def test_plugin_functions_have_the_schema_tensorrt_validates(op, monkeypatch):
    trtp, plugin = StandInTrtp(), tp.plugins()[op]
    functions = tp.plugin_functions(plugin, types.SimpleNamespace(DataType=DataType), trtp)
    trtp.register(plugin.plugin_id)(functions["register"])
    trtp.autotune(plugin.plugin_id)(functions["autotune"])
    if plugin.aot is not None:
        trtp.aot_impl(plugin.plugin_id)(functions["aot_impl"])
    else:
        trtp.impl(plugin.plugin_id)(functions["impl"])
    assert set(trtp.registered[plugin.plugin_id]) >= {"register", "autotune", "aot_impl" if plugin.aot else "impl"}

    # TensorRT calls register(*descs, **attrs): the output shapes are expressions of the input shapes
    args = case(op, BATCH, LENGTH)
    if op == "causal_conv1d":
        args = (*args[:2], torch.zeros(6), args[3])  # the zero bias of the no-optional-inputs convention
    if op == "mamba2_decode_step":
        args = (*args[:6], torch.zeros(56), *args[7:])
    tensors, attrs = split(op, args)
    descs = stand_in_descs(op, tensors)
    outputs = functions["register"](*descs, **attrs)
    expected = zoo_ops()[op].overload(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    if op == "mamba2_decode_step":  # the gate workspace after the op's outputs: z's shape, fp32
        expected = (*expected, torch.empty_like(args[3], dtype=torch.float32))
    assert [tuple(s.value for s in d.shape_expr) for d in outputs] == [tuple(t.shape) for t in expected]
    assert [d.dtype.name for d in outputs] == [TRT_NAMES[t.dtype] for t in expected]

    # autotune(*descs, *attrs, outputs): the types as they are, and one tactic per config
    (combination,) = functions["autotune"](*descs, *attrs.values(), outputs)
    assert len(combination.io_types.split(",")) == len(descs) + len(outputs)
    if plugin.aot is None:
        assert combination.tactics is None
        return
    assert combination.tactics == [1, 2, 3]

    # aot_impl(*descs, *attrs, outputs, tactic): TensorRT expressions of the plan (the compiler stubbed)
    def compile_payload(plugin_, inputs, attrs_, arch, tactic):
        return tp.kernel_plan(plugin_, inputs, attrs_, tactic), "kernel", "ptx", 16

    monkeypatch.setattr(tp, "compile_payload", compile_payload)
    name, ptx, launch, extra = functions["aot_impl"](*descs, *attrs.values(), outputs, 1)
    assert (name, ptx, launch.shared_mem) == ("kernel", "ptx", 16) and isinstance(extra, trtp.SymIntExprs)
    assert all(isinstance(e, trtp.SymInt32) for e in extra)
    grid = [getattr(launch, axis) for axis in ("grid_x", "grid_y", "grid_z") if hasattr(launch, axis)]
    assert all(isinstance(g, (int, ShapeExpr)) for g in grid) and launch.block_x % 32 == 0


def test_register_plugins_without_tensorrt_says_what_to_install():
    with pytest.raises(MissingDependencyError) as error:
        tp.register_plugins()
    message = str(error.value)
    assert "\n" not in message and "tensorrt" in message and "pip install 'graph-zoo[tensorrt]'" in message


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_rms_norm_plugin_in_a_tensorrt_network_matches_the_reference():
    import tensorrt as trt
    import tensorrt.plugin as trtp

    tp.register_plugins(["rms_norm"])
    x, weight = torch.randn(3, 7, 64, device="cuda"), torch.randn(64, device="cuda")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network()
    x_in = network.add_input("x", trt.float32, tuple(x.shape))
    weight_in = network.add_input("weight", trt.float32, tuple(weight.shape))
    layer = network.add_plugin(trtp.op.zoo.RmsNorm(x_in, weight_in, eps=1e-5), aot=True)
    network.mark_output(layer.get_output(0))
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(network, builder.create_builder_config())
    )
    context = engine.create_execution_context()
    out = torch.empty_like(x)
    for name, tensor in (("x", x), ("weight", weight), (layer.get_output(0).name, out)):
        context.set_tensor_address(name, tensor.data_ptr())
    context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    torch.testing.assert_close(out, zoo_ops()["rms_norm"].reference(x, weight, 1e-5), atol=1e-4, rtol=1e-3)
