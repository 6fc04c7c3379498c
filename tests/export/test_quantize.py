"""export.quantize: modelopt fake quantization (INT8, FP8, INT4-AWQ) of the tiny models, and the INT8
artifact with Q/DQ nodes in ONNX Runtime.

Weights ~ N(0, 1/d_model) (as benchmarks/quant_accuracy.py draws them), so logits are O(1). Thresholds, from
the benchmark's table (the tiny models, the shipped calibration text): INT8 (per-channel weights, per-tensor
activations) measured 22.3-29.1 dB of logit SQNR, FP8 E4M3 (one scale per tensor: 3 mantissa bits, coarser
than INT8's per-channel grid on Gaussian weights) 16.8-21.8 dB. The thresholds (18 and 12 dB) sit 4-5 dB
under the lowest family, so another calibration order or modelopt release passes, while a quantizer that
is disabled (inf dB: checked below 80), mis-scaled or clipping fails.
"""

import dataclasses
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from export.quantize import (
    CALIBRATION_FILE,
    FORMATS,
    calibration_data,
    export_quantized,
    quantize,
    sqnr_db,
    text_to_ids,
)
from tests.export.parity import ort_greedy, prompts, sessions, torch_greedy
from zoo.errors import ZooError
from zoo.registry import build_from_config, get_config

TINY = ["llama-tiny", "gpt-tiny", "dmc-tiny", "mamba2-tiny", "mamba2-hybrid-tiny", "moe-tiny"]
MIN_SQNR_DB = {"int8": 18.0, "fp8": 12.0}  # see the module docstring


def unit_gain_model(name: str) -> torch.nn.Module:
    config = get_config(name)
    return build_from_config(dataclasses.replace(config, init_std=config.d_model**-0.5)).eval()


def logits_sqnr(reference, quantized) -> float:
    ids = torch.randint(0, reference.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return sqnr_db(reference(ids), quantized(ids))


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("name", TINY)
def test_fake_quant_sqnr_above_threshold(name, fmt):
    reference = unit_gain_model(name)
    quantized = quantize(reference, fmt)
    record = quantized.quantization
    assert record.format == fmt and record.quantized_layers
    assert not any("lm_head" in n or "router" in n or "shared_gate" in n for n in record.quantized_layers)
    sqnr = logits_sqnr(reference, quantized)
    assert MIN_SQNR_DB[fmt] < sqnr < 80, f"{name} {fmt}: {sqnr:.1f} dB"  # < 80: it did quantize something
    for parameter, original in zip(reference.parameters(), unit_gain_model(name).parameters()):
        assert torch.equal(parameter, original)  # quantize leaves its argument unchanged


@pytest.mark.parametrize("name", ["llama-tiny", "mamba2-tiny"])
def test_int4_awq_runs_and_is_less_accurate_than_int8(name):
    reference = unit_gain_model(name)
    int4 = quantize(reference, "int4-awq")
    sqnr_int4, sqnr_int8 = logits_sqnr(reference, int4), logits_sqnr(reference, quantize(reference, "int8"))
    assert 0 < sqnr_int4 < sqnr_int8
    layer = int4.get_submodule(int4.quantization.quantized_layers[0])
    assert layer.input_quantizer.pre_quant_scale is not None  # AWQ's smoothing scales were searched


def test_calibration_data_is_deterministic_and_in_vocabulary():
    first, second = calibration_data(100, 256), calibration_data(100, 256)
    assert first == second and first.tokens > 500
    assert all(0 <= t < 100 for p in first.prompts for t in p)
    assert len({len(p) for p in first.prompts}) > 3  # prompts of different lengths
    assert all(len(p) <= 16 for p in calibration_data(100, 16).prompts)  # cut to the context
    import hashlib

    assert first.record()["sha256"] == hashlib.sha256(CALIBRATION_FILE.read_bytes()).hexdigest()
    assert text_to_ids("The river, the RIVER.", 1000) == text_to_ids("the river , the river .", 1000)


def test_unknown_format_and_unquantizable_models_are_one_line_errors(tmp_path):
    model = unit_gain_model("llama-tiny")
    cases = [
        (lambda: quantize(model, "int3"), "unknown quantization format 'int3'"),
        (lambda: export_quantized(model, tmp_path / "a", "nf4"), "unknown quantization format 'nf4'"),
        (lambda: quantize(torch.nn.Linear(4, 4), "int8"), "cannot quantize a Linear"),
        (lambda: quantize(model.to(torch.float16), "int8"), "float32"),
    ]
    for call, message in cases:
        with pytest.raises(ZooError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert ", ".join(FORMATS) in str(pytest.raises(ZooError, quantize, model, "int3").value)


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory):
    reference = unit_gain_model("llama-tiny")
    quantized = quantize(reference, "int8")
    # the export quantizes the float model itself (calibration is deterministic: the same model as `quantized`),
    # with the zoo ops fused, as `zoo export --quant int8` does
    path = export_quantized(reference, tmp_path_factory.mktemp("quant") / "artifact", "int8")
    return quantized, path


def test_int8_artifact_holds_qdq_nodes_and_records_the_quantization(int8_artifact):
    quantized, path = int8_artifact
    manifest = json.loads((path / "manifest.json").read_text())
    record = manifest["quantization"]
    assert record["format"] == "int8" and record["modelopt"]
    assert record["calibration"] == calibration_data(quantized.config.vocab_size, quantized.config.max_seq_len).record()
    assert record["quantized_layers"] == list(quantized.quantization.quantized_layers)
    for phase in ("prefill", "decode"):
        graph = onnx.load(path / f"{phase}.onnx").graph
        ops = Counter(node.op_type for node in graph.node)
        int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert len(int8_weights) == len(record["quantized_layers"])  # the weights are stored as int8 codes
        assert ops["DequantizeLinear"] >= len(record["quantized_layers"]) + ops["QuantizeLinear"]
        assert ops["QuantizeLinear"] > 0  # the activations of each distinct layer input


def test_int8_artifact_in_onnx_runtime_matches_the_fake_quant_model(int8_artifact):
    """ORT's QuantizeLinear computes round(x / s), modelopt round(x * (1 / s)): an activation code differs only
    where x / s falls within an ulp of a rounding boundary, none of which these inputs hit, so the logits agree
    to fp32 rounding (the project's fp32 tolerance); the greedy tokens are the same."""
    quantized, path = int8_artifact
    lengths = [7, 1, 12]
    ids, lens = prompts(quantized.config.vocab_size, lengths)
    cache = max(lengths) + 4
    want_logits, want_tokens = torch_greedy(quantized, ids, lens, cache)
    got_logits, got_tokens = ort_greedy(sessions(path), quantized, ids, lens, cache)
    for step, (got, want) in enumerate(zip(got_logits, want_logits, strict=True)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3, err_msg=f"step {step}")
    for step, (got, want) in enumerate(zip(got_tokens, want_tokens, strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")


def test_int8_artifact_generates_through_the_engine(int8_artifact):
    from runtime.engine import Engine

    quantized, path = int8_artifact
    batch = [[3, 14, 15, 92, 65], [35], [89, 79, 32, 38, 46, 26, 43]]
    engine = Engine.load(path)
    assert engine.backend == "onnxruntime"
    assert engine.generate(batch, max_new_tokens=6) == Engine(quantized, weight_layout="as-is").generate(batch, 6)
