"""`python -m runtime.demo`: the main job end to end. Export a model (seeded random weights) with fused ops
to an artifact directory, load it with ONNX Runtime, generate, and print the token match against the torch
model and the latency of both (`make demo` runs it on llama-small)."""

import argparse
import math
import time
from pathlib import Path

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-small")
    parser.add_argument("--out", default="bench-out/demo-artifact", help="the artifact directory (replaced)")
    parser.add_argument("--prompt-lens", default="37,5", help="comma-separated prompt lengths (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import zoo
    from export.onnx import export_onnx
    from runtime import Engine

    model = zoo.build(args.model, seed=args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = export_onnx(model, args.out, fused=True, overwrite=True)
    print(f"exported {args.model} (fused) to {path} in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    ort_engine = Engine.load(path)  # a directory with manifest.json: the onnxruntime backend
    print(f"loaded it into ONNX Runtime ({ort_engine.runner.provider}) in {time.perf_counter() - start:.1f} s")
    torch_engine = Engine.from_model(model, "torch")

    generator = torch.Generator().manual_seed(args.seed)
    lengths = [int(n) for n in args.prompt_lens.split(",")]
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    results = {}
    for name, engine in (("torch", torch_engine), ("onnxruntime", ort_engine)):
        engine.warmup(prompts, args.max_new_tokens)
        results[name] = engine.generate_with_stats(prompts, args.max_new_tokens)
    ours, reference = results["onnxruntime"].tokens, results["torch"].tokens
    matched = sum(a == b for row, ref in zip(ours, reference) for a, b in zip(row, ref))
    total = sum(len(row) for row in reference)
    print(f"greedy tokens, onnxruntime vs torch: {matched}/{total} match" + (" (all)" if ours == reference else ""))
    for row, tokens in enumerate(ours):
        print(f"  [{row}] {','.join(map(str, tokens))}")
    print(f"batch {len(prompts)}, prompts of {args.prompt_lens} tokens, {args.max_new_tokens} new tokens:")
    for name, result in results.items():
        tpot = "n/a" if math.isnan(result.tpot_s) else f"{result.tpot_s * 1e3:.2f} ms"
        print(f"  {name:12s} TTFT {result.ttft_s * 1e3:7.2f} ms   TPOT {tpot}")
    if ours != reference:
        raise SystemExit("the onnxruntime tokens differ from torch's")


if __name__ == "__main__":
    main()
