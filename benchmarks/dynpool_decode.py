"""Dynamic-pooling transformer figures, measured side by side in one run (batch 1, fp32, CPU):

1. prefill time and decode TPOT at context 2048 of dynpool-small (fixed stride 2, and the learned boundary
   predictor) against a plain transformer of the same width and total layer count (a GPT of 12 layers,
   d 512, 8 heads, d_ff 2048);
2. cached decode against recomputing the full forward for every new token at context 2048 (target >= 5x).

The models' calls are interleaved (one call of each model in turn, repeated), so that a shared machine's
changing load falls on all of them alike; figures are medians. Weights are column-major, as the torch
runner lays them out on CPU.

    python -m benchmarks.dynpool_decode [--context 2048] [--new-tokens 16] [--repeats 3]
"""

import argparse
import dataclasses
import statistics
import time

import torch

from runtime.runners import set_weight_layout
from zoo.models.dynpool import SIZES, DynPoolLM
from zoo.models.gpt.config import GPTConfig
from zoo.registry import build_from_config

PLAIN = "plain (gpt 12x512)"


def build(config) -> torch.nn.Module:
    """Seeded random weights (the registry builds its own families; dynpool may not be registered yet)."""
    if isinstance(config, GPTConfig):
        model = build_from_config(config)
    else:
        torch.manual_seed(0)
        model = DynPoolLM(config).eval()
    set_weight_layout(model, "column-major")
    return model


def interleaved_medians(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each call, after one warm-up call each; the calls alternate between names."""
    times = {name: [] for name in calls}
    for name, call in calls.items():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class Decoder:
    """A prefilled request whose every call decodes one more token at the next position."""

    def __init__(self, model, ids: torch.Tensor, room: int):
        self.model, self.position = model, ids.shape[1]
        self.state = model.init_state(1, room)
        self.token = model.prefill(ids, torch.tensor([self.position]), self.state)[0].argmax(-1)

    def __call__(self):
        logits, _ = self.model.decode_step(self.token, torch.tensor([self.position]), self.state)
        self.token, self.position = logits.argmax(-1), self.position + 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    context = args.context
    room = context + args.new_tokens + 2  # every decode call, the warm-up included, fits
    configs = {
        "dynpool-small-fixed": dataclasses.replace(SIZES["dynpool-small-fixed"], max_seq_len=room),
        "dynpool-small": dataclasses.replace(SIZES["dynpool-small"], max_seq_len=room),
        PLAIN: GPTConfig(vocab_size=256, d_model=512, n_layers=12, n_heads=8, d_ff=2048, max_seq_len=room),
    }
    models = {name: build(config) for name, config in configs.items()}
    ids = torch.randint(0, 256, (1, context), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([context])
    print(
        f"{torch.get_num_threads()} threads, fp32, batch 1, context {context}, interleaved medians of "
        f"{args.repeats} prefills and {args.new_tokens} decode steps\n"
    )
    with torch.inference_mode():
        states = {name: model.init_state(1, room) for name, model in models.items()}
        prefill = interleaved_medians(
            {name: lambda m=model, s=states[name]: m.prefill(ids, lengths, s) for name, model in models.items()},
            args.repeats,
        )
        decoders = {name: Decoder(model, ids, room) for name, model in models.items()}
        tpot = interleaved_medians(decoders, args.new_tokens)

        print(f"1. prefill of {context} tokens and decode TPOT at context {context}")
        for name, model in models.items():
            segments = ""
            if isinstance(model, DynPoolLM):
                segments = f"  {int(states[name][f'segments{model.config.n_pre}'])} segments"
            print(
                f"   {name:20s} {model.config.num_params() / 1e6:5.1f}M params  prefill {prefill[name] * 1e3:8.1f} ms "
                f"({prefill[name] / prefill[PLAIN]:4.2f}x of plain)  TPOT {tpot[name] * 1e3:7.2f} ms "
                f"({tpot[name] / tpot[PLAIN]:4.2f}x of plain){segments}"
            )

        print(f"\n2. cached decode (TPOT above) against recomputing the full forward per token, context {context}")
        pooled = ("dynpool-small-fixed", "dynpool-small")
        recompute = interleaved_medians(
            {name: lambda m=models[name]: m(ids)[:, -1].argmax(-1) for name in pooled}, args.repeats
        )
        for name in pooled:
            print(
                f"   {name:20s} cached {tpot[name] * 1e3:7.2f} ms/token  recompute {recompute[name] * 1e3:8.1f} "
                f"ms/token  {recompute[name] / tpot[name]:6.1f}x"
            )


if __name__ == "__main__":
    main()
