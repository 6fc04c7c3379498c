"""Accuracy of modelopt's fake quantization (export.quantize) against the fp32 model, per family and format:
the SQNR of the logits over a teacher-forced sequence, 10 log10(sum ref^2 / sum (ref - q)^2) in dB, the
fraction of its positions where the greedy (argmax) token agrees, and the fraction of 32 tokens that free-
running greedy generation (prefill, then decode steps) produces alike.

The models have random weights drawn with init_std = d_model^-1/2 (unit-gain linears): the zoo's default
0.02 makes every logit nearly 0, so argmax agreement would measure ties. The evaluation ids are seeded
random tokens (not the calibration text), a batch of prompts of different lengths.

    python -m benchmarks.quant_accuracy [--models llama-tiny,gpt-tiny,...] [--formats int8,fp8,int4-awq] [--json PATH]
"""

import argparse
import dataclasses
import json
import time
import warnings

import torch

from export.quantize import FORMATS, quantize, sqnr_db
from zoo.registry import build_from_config, get_config

MODELS = (
    "llama-tiny",
    "gpt-tiny",
    "dmc-tiny",
    "mamba2-tiny",
    "mamba2-hybrid-tiny",
    "moe-tiny",
    "llama-small",
    "mamba2-small",
    "mamba2-hybrid-small",
)
SEQUENCE, GENERATED, PROMPT_LENGTHS = 128, 32, (16, 5, 11)


def unit_gain_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The named model with weights ~ N(0, 1/d_model): logits O(1) that differ between tokens."""
    config = get_config(name)
    return build_from_config(dataclasses.replace(config, init_std=config.d_model**-0.5), seed=seed)


@torch.no_grad()
def greedy(model, prompts: torch.Tensor, lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) greedy tokens after right-padded prompts: a prefill, then decode steps on the model's cache."""
    state = model.init_state(prompts.shape[0], prompts.shape[1] + steps)
    logits, state = model.prefill(prompts, lengths, state)
    tokens, positions = [logits.argmax(-1)], lengths.clone()
    for _ in range(steps - 1):
        logits, state = model.decode_step(tokens[-1], positions, state)
        tokens.append(logits.argmax(-1))
        positions = positions + 1
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def measure(reference, quantized, seed: int = 0) -> dict:
    vocab = reference.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    sequence = torch.randint(0, vocab, (2, min(SEQUENCE, reference.config.max_seq_len)), generator=generator)
    want, got = reference(sequence), quantized(sequence)
    prompts = torch.randint(0, vocab, (len(PROMPT_LENGTHS), max(PROMPT_LENGTHS)), generator=generator)
    lengths = torch.tensor(PROMPT_LENGTHS)
    generated = greedy(reference, prompts, lengths, GENERATED) == greedy(quantized, prompts, lengths, GENERATED)
    return {
        "sqnr_db": sqnr_db(want, got),
        "teacher_forced_agreement": (want.argmax(-1) == got.argmax(-1)).float().mean().item(),
        "generated_agreement": generated.float().mean().item(),
    }


def run(models: list[str], formats: list[str]) -> list[dict]:
    rows = []
    for name in models:
        reference = unit_gain_model(name).eval()
        for fmt in formats:
            start = time.perf_counter()
            quantized = quantize(reference, fmt)
            seconds = time.perf_counter() - start
            row = {"model": name, "format": fmt, "layers": len(quantized.quantization.quantized_layers)}
            rows.append(row | measure(reference, quantized) | {"quantize_s": round(seconds, 1)})
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = f"{'model':<22}{'format':<10}{'layers':>7}{'SQNR dB':>9}{'TF agree':>10}{'gen agree':>10}{'quant s':>9}"


def format_row(row: dict) -> str:
    return (
        f"{row['model']:<22}{row['format']:<10}{row['layers']:>7}{row['sqnr_db']:>9.1f}"
        f"{row['teacher_forced_agreement']:>10.3f}{row['generated_agreement']:>10.3f}{row['quantize_s']:>9.1f}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="modelopt")  # its notices about untested transformers versions
    print(HEADER)
    rows = run(args.models.split(","), args.formats.split(","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
