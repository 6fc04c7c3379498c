"""The tensorrt target of the zoo backend: option parsing and its errors, the error without torch-tensorrt,
the zoo ops each family's graphs need converters for, the converters' argument mapping (against stand-ins
for tensorrt.plugin and torch-tensorrt), the whole route with a stand-in for torch-tensorrt's backend, and
(marked tensorrt) llama-tiny compiled by torch-tensorrt against eager."""

import subprocess
import sys
import types

import numpy as np
import numpy.typing as npt
import pytest
import torch

import passes.tensorrt_backend as trt_backend
import zoo
from passes.backend import TARGETS, parse_inductor_options, zoo_inductor
from passes.capture import example_inputs
from tests.passes.conftest import REGION_NODES, tiny_model
from zoo.errors import MissingDependencyError, ZooError


def small_graph():
    gm = torch.fx.symbolic_trace(torch.nn.Linear(4, 3))
    return gm, [torch.randn(2, 4)]


def test_unknown_target_lists_the_valid_ones():
    gm, inputs = small_graph()
    with pytest.raises(ZooError, match="unknown target 'tvm' of the zoo backend; valid targets: inductor, tensorrt"):
        zoo_inductor(gm, inputs, options={"target": "tvm"})
    assert TARGETS == ("inductor", "tensorrt")


def test_unknown_tensorrt_option_suggests_and_lists():
    with pytest.raises(ZooError) as error:
        trt_backend.parse_tensorrt_options({"min_blok_size": 1})
    message = str(error.value)
    assert "unknown tensorrt option 'min_blok_size' (did you mean min_block_size?)" in message
    assert "zoo_ops" in message and "enabled_precisions" in message and "\n" not in message


def test_tensorrt_options_are_split_into_zoo_options_and_settings():
    parsed = trt_backend.parse_tensorrt_options(
        {"zoo_ops": "torch", "disable": "idiom_fusion.swiglu", "min_block_size": 1, "use_python_runtime": True}
    )
    assert parsed.zoo_ops == "torch" and parsed.disabled == ("idiom_fusion.swiglu",)
    assert parsed.settings == {"min_block_size": 1, "use_python_runtime": True}
    with pytest.raises(ZooError, match="zoo_ops must be one of plugins, torch, got 'jit'"):
        trt_backend.parse_tensorrt_options({"zoo_ops": "jit"})
    assert parsed.moe == "routed" and trt_backend.parse_tensorrt_options({"moe": "grouped"}).moe == "grouped"
    with pytest.raises(ZooError, match="moe must be one of routed, grouped, got 'dense'"):
        trt_backend.parse_tensorrt_options({"moe": "dense"})
    with pytest.raises(
        ZooError, match="unknown pass.* fusion.rms in disable; the passes are: idiom_fusion.gated_rms_norm, "
    ):
        trt_backend.parse_tensorrt_options({"disable": ["fusion.rms"]})


def test_inductor_options_are_checked_and_merge_with_mode():
    with pytest.raises(ZooError, match="unknown inductor option 'max_autotun' \\(did you mean max_autotune"):
        zoo_inductor(*small_graph(), options={"max_autotun": True})
    patches = parse_inductor_options({"max_autotune": False}, mode="max-autotune")
    assert patches["max_autotune"] is False and patches["coordinate_descent_tuning"] is True
    assert parse_inductor_options({}) == {} and parse_inductor_options({}, mode="default") == {}
    with pytest.raises(ZooError, match="mode='max-autotune' is an inductor setting"):
        zoo_inductor(*small_graph(), mode="max-autotune", options={"target": "tensorrt"})


def test_without_torch_tensorrt_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # what `import torch_tensorrt` sees when missing
    want = "torch_tensorrt is not installed; install it with: pip install 'graph-zoo[tensorrt]'"
    with pytest.raises(MissingDependencyError) as error:
        zoo_inductor(*small_graph(), options={"target": "tensorrt"})
    assert str(error.value) == want
    model = torch.nn.Linear(4, 3)
    compiled = torch.compile(model, backend="zoo", options={"target": "tensorrt"})
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as wrapped:  # Dynamo wraps backend errors
        compiled(torch.randn(2, 4))
    assert str(wrapped.value.inner_exception) == want


def test_importing_the_backend_imports_no_tensorrt():
    code = (
        "import passes.backend, passes.tensorrt_backend, sys; print(sorted({'tensorrt', 'torch_tensorrt'} & "
        "sys.modules.keys()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_converter_ops_of_every_family_are_its_region_ops(family):
    name, _, captured = family
    for phase, step in captured.items():
        assert trt_backend.converter_ops(step.program.graph_module) == REGION_NODES.get(name, {}).get(phase, {})


def test_plugin_ids_and_what_generated_plugins_refuse():
    assert trt_backend.plugin_id("causal_conv1d_update") == "zoo::CausalConv1dUpdate"
    assert trt_backend.plugin_id("rms_norm") == "zoo::RmsNorm"
    ops = ["rms_norm", "causal_conv1d", "ssd_chunk_scan", "moe_experts", "mamba2_decode_step"]
    refused = trt_backend.generated_plugin_unsupported(ops)
    assert refused == {"causal_conv1d": ["Optional[Tensor] bias"], "mamba2_decode_step": ["Optional[Tensor] conv_bias"]}


def test_plugin_attributes_take_the_declared_type():
    as_array = trt_backend.plugin_attribute(3, npt.NDArray[np.int64])
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.int64 and as_array.item() == 3
    assert trt_backend.plugin_attribute(1e-5, float) == 1e-5 and trt_backend.plugin_attribute(2, int) == 2
    assert trt_backend.plugin_attribute("softmax-topk", str) == "softmax-topk"


class FakeLayer:
    def __init__(self, call):
        self.call, self.name = call, None

    def get_output(self, i):
        return ("output", i)


class FakeNetwork:
    def __init__(self):
        self.added = []

    def add_plugin(self, call, aot):
        self.added.append((call, aot))
        return FakeLayer(call)


@pytest.fixture
def stand_in_tensorrt(monkeypatch):
    """tensorrt.plugin with zoo::CausalConv1dUpdate and zoo::GatedRmsNorm plugins (the second with an input
    named unlike the op's argument), and the torch-tensorrt converter registry; yields the registrations."""
    registered = {}

    def plugin(tensor_names, attrs):
        def call(*tensors, **attributes):
            return tensors, attributes

        call.input_tensor_names, call.input_attrs = tensor_names, attrs
        return call

    zoo_plugins = types.SimpleNamespace(
        CausalConv1dUpdate=plugin(["window", "x", "weight", "bias"], {}),
        GatedRmsNorm=plugin(["x", "gate", "weight"], {"group_size": npt.NDArray[np.int64], "eps": float}),
        RmsNorm=plugin(["x", "weight"], {"eps": float}),
    )
    registry = {}  # QDP_REGISTRY: filled by register_plugins()
    registered_ids = {"zoo::CausalConv1dUpdate": types.SimpleNamespace(aot_impl_func=object())}
    registered_ids |= {"zoo::GatedRmsNorm": types.SimpleNamespace(aot_impl_func=None)}
    registered_ids |= {"zoo::RmsNorm": types.SimpleNamespace(aot_impl_func=None)}

    def converter(overload, capability_validator, supports_dynamic_shapes):
        def register(fn):
            registered[overload] = (fn, capability_validator)
            return fn

        return register

    modules = {
        "tensorrt": types.ModuleType("tensorrt"),
        "tensorrt.plugin": types.SimpleNamespace(op=types.SimpleNamespace(zoo=zoo_plugins)),
        "tensorrt.plugin._lib": types.SimpleNamespace(QDP_REGISTRY=registry),
        "torch_tensorrt": types.ModuleType("torch_tensorrt"),
        "torch_tensorrt.dynamo": types.ModuleType("torch_tensorrt.dynamo"),
        "torch_tensorrt.dynamo.conversion": types.SimpleNamespace(dynamo_tensorrt_converter=converter),
        "torch_tensorrt.dynamo.conversion.converter_utils": types.SimpleNamespace(
            get_trt_tensor=lambda ctx, value, name: ("itensor", value)
        ),
        "zoo.ops.tensorrt_plugin": types.SimpleNamespace(register_plugins=lambda: registry.update(registered_ids)),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(trt_backend, "_CONVERTED", {})
    return registered


def test_plugin_converters_match_arguments_by_name(stand_in_tensorrt):
    left = trt_backend.register_plugin_converters(["causal_conv1d_update", "gated_rms_norm", "rms_norm", "swiglu"])
    assert left == ["gated_rms_norm", "swiglu"]  # its plugin names an input `gate` (the op's is `z`); no plugin
    convert, tensors_present = stand_in_tensorrt[torch.ops.zoo.causal_conv1d_update.default]
    network = FakeNetwork()
    outputs = convert(types.SimpleNamespace(net=network), "target", ("w", "x", "k", "b"), {}, "conv")
    assert outputs == (("output", 0), ("output", 1))  # the op's two outputs: y and the new window
    (tensors, attributes), aot = network.added[0]
    assert tensors == (("itensor", "w"), ("itensor", "x"), ("itensor", "k"), ("itensor", "b")) and aot is True
    node = types.SimpleNamespace(args=("w", "x", "k", None), kwargs={})
    assert not tensors_present(node, None)  # a call without a bias runs in PyTorch
    convert, _ = stand_in_tensorrt[torch.ops.zoo.rms_norm.default]
    network = FakeNetwork()
    assert convert(types.SimpleNamespace(net=network), "target", ("x", "w", 1e-6), {}, "norm") == ("output", 0)
    assert network.added[0] == (((("itensor", "x"), ("itensor", "w")), {"eps": 1e-6}), False)


def compile_with_stand_in(monkeypatch, model, phase, options, batch=3, length=7, cache=12):
    """The tensorrt route with torch's aot_eager in place of torch-tensorrt's backend: (eager outputs,
    compiled outputs, the options and zoo ops the stand-in received, the Dynamo graph module's meta)."""
    from torch._dynamo.backends.debugging import aot_eager

    received, metas = {}, []

    def backend(gm, inputs, options):
        received["options"] = options
        received["ops"] = trt_backend.converter_ops(gm)
        return aot_eager(gm, inputs)

    def recording_zoo(gm, inputs):
        compiled = zoo_inductor(gm, inputs, options=options)
        metas.append(gm.meta)
        return compiled

    monkeypatch.setattr(trt_backend, "torch_tensorrt_backend", lambda: backend)
    step = model.prefill if phase == "prefill" else model.decode_step
    with torch.no_grad():
        want = step(*example_inputs(model, phase, batch, length, cache))
        got = torch.compile(step, backend=recording_zoo, fullgraph=True)(
            *example_inputs(model, phase, batch, length, cache)
        )
    return want, got, received, metas[0]


def test_llama_route_fuses_idioms_and_hands_them_to_plugins(monkeypatch):
    monkeypatch.setattr(trt_backend, "register_plugin_converters", lambda ops: [n for n in ops if n == "swiglu"])
    model = tiny_model("llama-tiny")
    options = {"target": "tensorrt", "min_block_size": 1}
    want, got, received, meta = compile_with_stand_in(monkeypatch, model, "decode", options)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # logits and every updated state tensor
    layers = model.config.n_layers
    assert meta["zoo_tensorrt"]["converter_ops"] == received["ops"]
    assert received["ops"]["rope"] == 2 * layers and received["ops"]["swiglu"] == layers
    assert meta["zoo_tensorrt"]["in_torch"] == ["swiglu"]
    assert received["options"] == {"min_block_size": 1, "torch_executed_ops": {torch.ops.zoo.swiglu.default}}
    assert meta["zoo_pass_hits"]["idiom_fusion.rope"] == 2 * layers


def test_mamba2_route_hands_the_grown_decode_step_to_its_plugin(monkeypatch):
    monkeypatch.setattr(trt_backend, "register_plugin_converters", lambda ops: [])  # every op has its plugin
    model = tiny_model("mamba2-tiny")
    want, got, received, meta = compile_with_stand_in(monkeypatch, model, "decode", {"target": "tensorrt"})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert received["ops"]["mamba2_decode_step"] == model.config.n_layers
    assert not {"causal_conv1d_update", "ssd_state_update", "gated_rms_norm"} & set(received["ops"])
    assert meta["zoo_pass_hits"]["region_growth.mamba2_decode_step"] == model.config.n_layers


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_moe_route_hands_routed_single_launch_ops_to_plugins(monkeypatch, phase):
    """zoo::moe_layer (grown from the router and zoo::moe_experts) becomes the two routed ops, whose plugins
    are AOT kernels; the rewritten graph computes the eager logits and state."""
    monkeypatch.setattr(trt_backend, "register_plugin_converters", lambda ops: [])
    model = tiny_model("moe-tiny")
    want, got, received, meta = compile_with_stand_in(monkeypatch, model, phase, {"target": "tensorrt"})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    layers = model.config.n_layers
    assert received["ops"]["moe_routed_gate_up"] == received["ops"]["moe_routed_down"] == layers
    assert not {"moe_experts", "moe_layer"} & set(received["ops"])
    assert meta["zoo_pass_hits"]["tensorrt.route_moe"] == meta["zoo_pass_hits"]["region_growth.moe_layer"] == layers


def test_moe_grouped_hands_the_schedule_and_grouped_ops_to_plugins(monkeypatch):
    monkeypatch.setattr(trt_backend, "register_plugin_converters", lambda ops: [])
    model = tiny_model("moe-tiny")
    options = {"target": "tensorrt", "moe": "grouped"}
    want, got, received, meta = compile_with_stand_in(monkeypatch, model, "prefill", options)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    layers = model.config.n_layers
    grouped = ("moe_schedule", "moe_grouped_gate_up", "moe_grouped_down")
    assert [received["ops"].get(op) for op in grouped] == [layers] * 3
    assert not {"moe_layer", "moe_routed_gate_up"} & set(received["ops"])
    assert meta["zoo_pass_hits"]["tensorrt.route_moe"] == layers


def test_mamba2_route_without_growth_needs_the_region_ops(monkeypatch):
    model = tiny_model("mamba2-tiny")
    growths = ["region_growth.mamba2_decode_step", "region_growth.moe_layer"]
    options = {"target": "tensorrt", "zoo_ops": "torch", "disable": growths}
    want, got, received, meta = compile_with_stand_in(monkeypatch, model, "decode", options)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    region = REGION_NODES["mamba2-tiny"]["decode"]
    assert {op: received["ops"][op] for op in region} == region
    assert meta["zoo_tensorrt"]["in_torch"] == list(received["ops"])  # zoo_ops="torch": every zoo op
    assert not set(growths) & set(meta["zoo_pass_hits"])


@pytest.mark.tensorrt
def test_llama_tiny_compiled_by_torch_tensorrt_matches_eager():
    model = zoo.build("llama-tiny", seed=3, device="cuda")
    options = {"target": "tensorrt", "min_block_size": 1, "disable_tf32": True}
    with torch.no_grad():
        for phase, step in (("prefill", model.prefill), ("decode", model.decode_step)):
            want_logits, _ = step(*example_inputs(model, phase, 3, 9, 16))
            compiled = torch.compile(step, backend="zoo", options=options, fullgraph=True)
            got_logits, _ = compiled(*example_inputs(model, phase, 3, 9, 16))
            torch.testing.assert_close(got_logits, want_logits, atol=1e-3, rtol=1e-3, msg=phase)
