"""The Hourglass figures, measured side by side in one run (batch 1, fp32, eager):

1. prefill time and decode TPOT at context 2048 of hourglass-small (2@1 8@3 2@1: 8 of its 12 layers on a
   sequence shortened 3x), and of the same blocks arranged 1@1 10@3 1@1, against the plain transformer
   of the same blocks (12@1: same width, same 12 layers; target: hourglass prefill >= 1.8x faster);
2. the hourglass's cached decode against recomputing the whole sequence per token at context 2048 (one
   prefill of the 2048 + t tokens, last position's logits only; target: cached >= 5x faster).

Every figure is a median over rounds that time each configuration once, so that the shared machine's
noise falls on both sides of a ratio alike. On a loaded machine, --threads 1 gives steadier figures.

    python -m benchmarks.hourglass_decode [--context 2048] [--new-tokens 16] [--repeats 3] [--threads N]
        [--hierarchies "2@1 8@3 2@1,1@1 10@3 1@1"]
"""

import argparse
import dataclasses
import statistics
import time

import torch

from zoo.models.hourglass import SIZES, HourglassLM


def build(config, seed: int = 0) -> HourglassLM:
    torch.manual_seed(seed)
    return HourglassLM(config).eval()


def prefill_seconds(model, prompt: torch.Tensor) -> float:
    state = model.init_state(1, prompt.shape[1] + 1)
    start = time.perf_counter()
    model.prefill(prompt, torch.tensor([prompt.shape[1]]), state)
    return time.perf_counter() - start


def decode_tpot(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds per token of new_tokens - 1 cached decode steps after a prefill and one untimed step."""
    context = prompt.shape[1]
    state = model.init_state(1, context + new_tokens)
    model.prefill(prompt, torch.tensor([context]), state)
    token = torch.ones(1, dtype=torch.long)
    model.decode_step(token, torch.tensor([context]), state)
    start = time.perf_counter()
    for t in range(1, new_tokens):
        model.decode_step(token, torch.tensor([context + t]), state)
    return (time.perf_counter() - start) / (new_tokens - 1)


def recompute_tpot(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds per token when each new token re-runs the whole sequence (no cache kept between tokens)."""
    ids = torch.cat([prompt, torch.ones(1, new_tokens, dtype=torch.long)], dim=1)
    context = prompt.shape[1]
    start = time.perf_counter()
    for t in range(new_tokens):
        length = context + t + 1
        model.prefill(ids[:, :length], torch.tensor([length]), model.init_state(1, length))
    return (time.perf_counter() - start) / new_tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--recompute-tokens", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--hierarchies", default="2@1 8@3 2@1,1@1 10@3 1@1", help="comma-separated")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    small = dataclasses.replace(SIZES["hourglass-small"], max_seq_len=args.context + args.new_tokens)
    configs = {text: dataclasses.replace(small, hierarchy=text) for text in args.hierarchies.split(",")}
    plain = f"{small.n_layers}@1"
    configs[plain] = dataclasses.replace(small, hierarchy=plain)
    if len({c.n_layers for c in configs.values()}) != 1:
        raise SystemExit(f"every hierarchy must have {small.n_layers} layers, as the plain {plain!r}")
    models = {text: build(config) for text, config in configs.items()}
    hourglass = args.hierarchies.split(",")[0]
    prompt = torch.randint(0, small.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0))
    print(
        f"{torch.get_num_threads()} threads, fp32, batch 1, eager, context {args.context}, "
        f"{args.new_tokens} new tokens, median of {args.repeats} rounds\n"
    )

    rounds = []
    with torch.inference_mode():
        for model in models.values():  # warm-up
            prefill_seconds(model, prompt[:, :256])
            decode_tpot(model, prompt[:, :256], 3)
        for _ in range(args.repeats):
            times = {}
            for text, model in models.items():
                times[text, "prefill"] = prefill_seconds(model, prompt)
                times[text, "tpot"] = decode_tpot(model, prompt, args.new_tokens)
            times[hourglass, "recompute"] = recompute_tpot(models[hourglass], prompt, args.recompute_tokens)
            rounds.append(times)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}

    print(f"1. prefill and decode TPOT at context {args.context}, against the plain {plain!r} of the same blocks")
    for text, config in configs.items():
        prefill, tpot = median[text, "prefill"], median[text, "tpot"]
        speedup = (
            ""
            if text == plain
            else (
                f"  prefill {median[plain, 'prefill'] / prefill:.2f}x faster, TPOT {median[plain, 'tpot'] / tpot:.2f}x"
            )
        )
        print(
            f"   {text:14s} {config.num_params() / 1e6:5.1f}M params  prefill {prefill * 1e3:8.1f} ms  "
            f"TPOT {tpot * 1e3:7.2f} ms{speedup}"
        )
    print("   (target: hourglass prefill >= 1.8x faster)")
    cached, recompute = median[hourglass, "tpot"], median[hourglass, "recompute"]
    print(f"\n2. {hourglass!r} decode at context {args.context}: cached step against recomputing the sequence")
    print(
        f"   cached {cached * 1e3:8.2f} ms/token  recompute {recompute * 1e3:8.1f} ms/token  "
        f"{recompute / cached:.1f}x faster (target >= 5x)"
    )


if __name__ == "__main__":
    main()
