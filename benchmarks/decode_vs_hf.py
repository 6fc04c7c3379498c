"""Issue 2's figure: greedy-decode TPOT of the zoo runtime (torch and compiled backends) against HF
transformers' `generate` on the same weights, in one run; a thin view over `zoo bench`'s harness.

    python -m benchmarks.decode_vs_hf [--model llama-small] [--batch 1] [--prompt-len 128] [--new-tokens 128]

Targets: torch TPOT <= 0.8x HF's, compiled <= 0.5x HF's.
"""

import argparse

import torch

from benchmarks.harness import Grid, run_bench


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    grid = Grid(("torch", "compiled"), (args.batch,), (args.prompt_len,), (args.new_tokens,), repeats=args.repeats)
    report = run_bench(args.model, grid, compare="hf")
    tpot = {r["runner"]: r["summary"]["tpot_s"] for r in report["results"]}
    print(
        f"{args.model}: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"greedy, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'runner':10s} {'TPOT ms':>9s} {'vs HF':>7s}")
    for name in ("hf", "torch", "compiled"):
        print(f"{name:10s} {tpot[name] * 1e3:9.2f} {tpot[name] / tpot['hf']:6.2f}x")


if __name__ == "__main__":
    main()
