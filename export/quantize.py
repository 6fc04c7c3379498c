"""Quantization with nvidia-modelopt (INT8, FP8, INT4-AWQ) and its export to ONNX with Q/DQ nodes.

`quantize(model, fmt)` returns a fake-quantized copy of a zoo model: modelopt replaces its linear layers by
quantized ones and calibrates them on the shipped text (`calibration_data`). `export_quantized` writes the
same artifact as export.onnx.export_onnx (prefill.onnx, decode.onnx, manifest.json), so `zoo run DIR` and
`Engine.load(DIR)` run it in ONNX Runtime.

Formats (modelopt's configs, algorithm "max" calibration unless said):
- int8: weights per output channel, activations per tensor, symmetric (scale amax / 127, codes in
  [-128, 127]) (mtq.INT8_DEFAULT_CFG);
- fp8: E4M3 weights and activations, one scale per tensor (mtq.FP8_DEFAULT_CFG);
- int4-awq: weight-only, 4-bit blocks of 128 input channels along each row (a row shorter than a block is
  one block), with AWQ-lite's per-input-channel pre-quantization scales (mtq.INT4_AWQ_CFG).

What is quantized: the nn.Linear layers that run the model's matmuls over hidden states: attention q/k/v/o,
the dense MLPs (and MoE shared experts), Mamba-2 in_proj and out_proj. What stays in full precision, and why:
- lm_head and tied embeddings: the logits layer is the most sensitive (every quantization error lands on
  the output distribution) and the models call it as F.linear on the weight, not through the module;
- the embedding table: a gather, no matmul to speed up;
- the MoE router and shared-expert gate: a discrete top-k over their logits, so small errors flip routing;
  the routed experts' stacked weights are tensors of the zoo::moe_experts op, not nn.Linear modules, so
  modelopt does not see them (quantizing them needs a quantized face of the op);
- norms, Mamba-2's conv1d (read by zoo::causal_conv1d as a tensor), A_log, D and dt_bias: per-channel or
  per-head vectors feeding exp/softplus dynamics, negligible in size and compute.

The ONNX form (`export_form`): each quantized linear becomes `QuantizedLinear`, which holds the integer (or
FP8) weight codes and scales as buffers and calls torch's quantized_decomposed ops, which the ONNX exporter
translates to QuantizeLinear / DequantizeLinear. So the fake-quant model goes through export_onnx's capture
and pass pipeline unchanged. INT4 codes are held in INT8 tensors, one row per block, dequantized per row
(DequantizeLinear axis 0) and reshaped: packed INT4 and blocked DequantizeLinear need opset 21, and the
exporter writes opset 20.
"""

import copy
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ZooError, require

FORMATS = ("int8", "fp8", "int4-awq")
CALIBRATION_FILE = Path(__file__).with_name("calibration.txt")
# prompt lengths of the calibration batches (cut to the model's context): short, long and in between, so that
# activation ranges see prefill at several lengths and the padding of ragged batches
CALIBRATION_LENGTHS = (7, 64, 23, 128, 41, 96, 12, 77)
CALIBRATION_BATCH = 4
# modelopt's quantizer name patterns of the layers kept in full precision (see the module docstring)
FULL_PRECISION = ("*lm_head*", "*router*", "*shared_gate*", "*conv1d*", "*embed*")
FP8_MAX = 448  # the largest finite float8_e4m3fn
# zero point, quant_min, quant_max, dtype of quantized_decomposed; modelopt's default is the full range (not
# narrow), as ONNX QuantizeLinear saturates: values below -amax become -128
INT8_ARGS = (0, -128, 127, torch.int8)
FP8_ARGS = (0, -FP8_MAX, FP8_MAX, torch.float8_e4m3fn)
AMAX_EPSILON = 1.0 / (1 << 24)  # modelopt treats a smaller amax as zero: everything quantizes to 0


@dataclass(frozen=True)
class Calibration:
    """Token-id prompts of the calibration text for one vocabulary, and what the manifest says about them."""

    name: str
    sha256: str
    prompts: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def record(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "tokens": self.tokens, "prompts": len(self.prompts)}

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(right-padded ids (B, L), lengths (B,)) batches of CALIBRATION_BATCH prompts of different lengths."""
        batches = []
        for start in range(0, len(self.prompts), CALIBRATION_BATCH):
            group = self.prompts[start : start + CALIBRATION_BATCH]
            ids = torch.zeros(len(group), max(map(len, group)), dtype=torch.int64)
            for row, prompt in enumerate(group):
                ids[row, : len(prompt)] = torch.tensor(prompt)
            batches.append((ids, torch.tensor([len(p) for p in group])))
        return batches


def text_to_ids(text: str, vocab_size: int) -> list[int]:
    """Words and punctuation marks of `text` as ids in [0, vocab_size): each lower-cased piece hashed (blake2b,
    so the same on every machine and Python run). The zoo's models have random weights and small vocabularies,
    and no tokenizer is downloaded: what calibration needs is a realistic, repetitive (Zipf-like) id stream."""
    pieces = re.findall(r"\w+|[^\w\s]", text.lower())
    return [int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little") % vocab_size for p in pieces]


def calibration_data(vocab_size: int, max_len: int, path: str | os.PathLike = CALIBRATION_FILE) -> Calibration:
    """The text at `path` (default: the shipped export/calibration.txt) cut into prompts of
    CALIBRATION_LENGTHS tokens (at most `max_len`), cycling through the lengths until the text is used up."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZooError(f"cannot read the calibration text {path}: {exc.strerror or exc}") from exc
    ids = text_to_ids(data.decode("utf-8"), vocab_size)
    prompts, start, i = [], 0, 0
    while start < len(ids):
        length = min(CALIBRATION_LENGTHS[i % len(CALIBRATION_LENGTHS)], max_len)
        prompts.append(ids[start : start + length])
        start, i = start + length, i + 1
    if not prompts:
        raise ZooError(f"the calibration text {path} holds no words")
    return Calibration(path.name, hashlib.sha256(data).hexdigest(), prompts)


def quantization_config(fmt: str) -> dict:
    """modelopt's config for `fmt` with the full-precision layers of this module added."""
    mtq = require("modelopt.torch.quantization", "quant")
    check_format(fmt)
    base = {"int8": mtq.INT8_DEFAULT_CFG, "fp8": mtq.FP8_DEFAULT_CFG, "int4-awq": mtq.INT4_AWQ_CFG}[fmt]
    config = copy.deepcopy(base)
    config["quant_cfg"] = [*config["quant_cfg"], *({"quantizer_name": p, "enable": False} for p in FULL_PRECISION)]
    return config


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ZooError(f"unknown quantization format {fmt!r}; known: {', '.join(FORMATS)}")


def check_quantizable(model: nn.Module) -> None:
    """A zoo language model in float32 with linear layers to quantize, or a one-line error."""
    name = type(model).__name__
    if not all(hasattr(model, attr) for attr in ("config", "prefill", "init_state")):
        raise ZooError(f"cannot quantize a {name}: quantize takes a zoo language model (zoo.build or load_model)")
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ZooError(f"cannot quantize {model.config.family} model {name}: it has no linear layers")
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ZooError(f"quantize takes a float32 model (the scales are calibrated in fp32), got {dtype}")


@dataclass(frozen=True)
class QuantizationRecord:
    """What a quantized model (and its artifact's manifest) records: the format, the calibration data, the
    layers quantized, and the modelopt version that made it."""

    format: str
    calibration: dict
    quantized_layers: tuple[str, ...]
    modelopt: str

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "calibration": self.calibration,
            "quantized_layers": list(self.quantized_layers),
            "full_precision_patterns": list(FULL_PRECISION),
            "modelopt": self.modelopt,
        }


def quantize(model: nn.Module, fmt: str, calibration: Calibration | None = None) -> nn.Module:
    """A fake-quantized copy of `model` (float32, left unchanged) in format `fmt` ("int8", "fp8", "int4-awq"),
    calibrated by prefills of `calibration` (default: the shipped text for the model's vocabulary), in eval
    mode. Its `quantization` attribute is the QuantizationRecord that export_quantized writes."""
    check_format(fmt)
    check_quantizable(model)
    mtq = require("modelopt.torch.quantization", "quant")
    from importlib.metadata import version

    config = model.config
    calibration = calibration or calibration_data(config.vocab_size, config.max_seq_len)
    batches = calibration.batches()

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for ids, lengths in batches:
                m.prefill(ids, lengths, m.init_state(ids.shape[0], ids.shape[1]))

    quantized = mtq.quantize(copy.deepcopy(model).eval(), quantization_config(fmt), forward_loop=forward_loop)
    layers = tuple(name for name, module in quantized.named_modules() if is_quantized_linear(module))
    if not layers:
        raise ZooError(f"cannot quantize {config.family} model: none of its linear layers is quantized in {fmt}")
    quantized.quantization = QuantizationRecord(fmt, calibration.record(), layers, version("nvidia-modelopt"))
    return quantized.eval()


def is_quantized_linear(module: nn.Module) -> bool:
    quantizer = getattr(module, "weight_quantizer", None)
    return isinstance(module, nn.Linear) and quantizer is not None and quantizer.is_enabled


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - approx)^2), in fp64."""
    reference, approximation = reference.double(), approximation.double()
    noise = (reference - approximation).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise)) if noise > 0 else float("inf")


def amax_scale(amax: torch.Tensor, max_code: float) -> torch.Tensor:
    """amax / max_code in fp32, with modelopt's rule that an amax of (nearly) zero quantizes everything to 0
    (any scale does then: 1)."""
    amax = amax.float()
    return torch.where(amax <= AMAX_EPSILON, torch.ones_like(amax), amax / max_code)


class QuantizedLinear(nn.Module):
    """The export form of one of modelopt's quantized linear layers: y = x' W^T + b with

    - x' = DQ(Q(x)) per tensor (int8, fp8), or x * pre_quant_scale (int4-awq: AWQ's smoothing, no activation
      quantization);
    - W = DQ(codes): int8 codes per output channel; fp8 codes per tensor; int4 codes (in int8 storage) per
      block of `block` input channels, laid out (rows * blocks, block) and dequantized per row, the row
      padding of a last partial block cut off.
    The codes are those of modelopt's fake-quantized weight, so this computes what the fake-quant layer does
    (up to float rounding in the scale: x / (amax / q) here, x * (q / amax) in modelopt).
    """

    def __init__(self, layer: nn.Module, fmt: str):
        super().__init__()
        self.fmt, self.in_features, self.out_features = fmt, layer.in_features, layer.out_features
        with torch.no_grad():
            fake_weight = layer.weight_quantizer(layer.weight).float()
        amax = layer.weight_quantizer.amax.detach()
        if fmt == "int8":
            scale = amax_scale(amax.reshape(-1), 127.0)
            codes = torch.round(fake_weight / scale[:, None]).to(torch.int8)
        elif fmt == "fp8":
            scale = amax_scale(amax.reshape(()), FP8_MAX)
            codes = (fake_weight / scale).to(torch.float8_e4m3fn)
            self.fp8_weight_scale = float(scale)  # dequantize_per_tensor takes a float scale
        else:
            self.block = min(layer.weight_quantizer.block_sizes[-1], self.in_features)
            padded = -(-self.in_features // self.block) * self.block
            rows = F.pad(fake_weight, (0, padded - self.in_features)).reshape(-1, self.block)
            scale = amax_scale(amax.reshape(-1), 7.0)
            codes = torch.round(rows / scale[:, None]).to(torch.int8)
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("zero_points", torch.zeros(scale.shape, dtype=torch.int64))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        quantizer = layer.input_quantizer
        max_code = 127.0 if fmt == "int8" else FP8_MAX
        self.input_scale = float(amax_scale(quantizer.amax.detach(), max_code)) if quantizer.is_enabled else None
        smoothing = quantizer.pre_quant_scale
        self.register_buffer("pre_quant_scale", None if smoothing is None else smoothing.detach().float().clone())

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        if self.pre_quant_scale is not None:
            x = x * self.pre_quant_scale
        if self.input_scale is None:
            return x
        if self.fmt == "int8":
            return ops.dequantize_per_tensor(
                ops.quantize_per_tensor(x, self.input_scale, *INT8_ARGS), self.input_scale, *INT8_ARGS
            )
        if torch.compiler.is_exporting():  # the op, for its ONNX translation: QuantizeLinear to FLOAT8E4M3FN
            codes = ops.quantize_per_tensor(x, self.input_scale, *FP8_ARGS)
        else:  # QuantizeLinear's fp8 semantics; torch's eager op rounds to integers first (it is written for ints)
            codes = (x.float() / self.input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return ops.dequantize_per_tensor(codes, self.input_scale, *FP8_ARGS)

    def weight(self) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        if self.fmt == "int8":
            return ops.dequantize_per_channel(self.weight_codes, self.weight_scale, self.zero_points, 0, *INT8_ARGS[1:])
        if self.fmt == "fp8":
            return ops.dequantize_per_tensor(self.weight_codes, self.fp8_weight_scale, *FP8_ARGS)
        rows = ops.dequantize_per_channel(self.weight_codes, self.weight_scale, self.zero_points, 0, -8, 7, torch.int8)
        return rows.reshape(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.weight(), self.bias)


def export_form(quantized: nn.Module) -> nn.Module:
    """A plain zoo model (no modelopt modules) with each quantized linear layer of `quantized` replaced by
    its QuantizedLinear: what torch.export captures for ONNX."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

    record = quantized.quantization
    with torch.device("meta"):
        plain = type(quantized)(quantized.config)
    names = set(plain.state_dict())
    plain.load_state_dict({k: v.detach() for k, v in quantized.state_dict().items() if k in names}, assign=True)
    for name in record.quantized_layers:
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent), child, QuantizedLinear(quantized.get_submodule(name), record.format))
    return plain.eval()


def export_quantized(
    model: nn.Module,
    out_dir: str | os.PathLike,
    fmt: str,
    fused: bool = True,
    overwrite: bool = False,
    calibration: Calibration | None = None,
) -> Path:
    """Quantize `model` (float32; or pass a model `quantize` returned in `fmt`) and export it as an artifact
    directory like export.onnx.export_onnx, whose graphs hold QuantizeLinear / DequantizeLinear nodes and
    whose manifest adds "quantization" (QuantizationRecord.to_dict)."""
    from export.artifact import check_writable, is_artifact
    from export.onnx import export_onnx
    from zoo.checkpoint import check_output_directory

    check_format(fmt)
    check_output_directory(out_dir, overwrite, holds_ours=is_artifact, kind="zoo artifact")  # before slow work
    check_writable(out_dir)
    record = getattr(model, "quantization", None)
    if record is None:
        model = quantize(model, fmt, calibration)
        record = model.quantization
    elif record.format != fmt:
        raise ZooError(f"the model was quantized to {record.format}; cannot export it as {fmt}")
    return export_onnx(
        export_form(model), out_dir, fused=fused, overwrite=overwrite, manifest_extra={"quantization": record.to_dict()}
    )
