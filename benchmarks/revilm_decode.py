"""TTFT and TPOT of revilm-tiny generating from an image, with and without retrieved captions.

TTFT includes encode_media (ViT, resampler and, with retrieval, the caption encoder: once per request);
TPOT is the decode step, whose cross-attention reads the cached media and caption keys and values.

    python -m benchmarks.revilm_decode [--model revilm-tiny] [--batch 1] [--prompt 32] [--new 32] [--repeats 5]
"""

import argparse
import statistics

import torch

import zoo
from runtime import Engine


def measure(engine, prompts, images, retrieved, new_tokens: int, repeats: int) -> tuple[float, float]:
    engine.generate_with_stats(prompts, 2, images=images, retrieved=retrieved)  # warm-up
    runs = [engine.generate_with_stats(prompts, new_tokens, images=images, retrieved=retrieved) for _ in range(repeats)]
    return statistics.median(r.ttft_s for r in runs), statistics.median(r.tpot_s for r in runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="revilm-tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = zoo.load_model(args.model)
    c = model.config
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, c.vocab_size, (args.batch, args.prompt), generator=generator).tolist()
    images = torch.randn(args.batch, 3, c.vision.image_size, c.vision.image_size, generator=generator)
    captions = torch.randint(0, c.vocab_size, (args.batch, c.n_neighbors, c.neighbor_length), generator=generator)
    engine = Engine(model)
    print(f"{args.model}: batch {args.batch}, prompt {args.prompt}, {args.new} new tokens (median of {args.repeats})")
    print(f"{'':22} {'TTFT ms':>8} {'TPOT ms':>8}")
    for label, retrieved in (("without retrieval", None), (f"with {c.n_neighbors} captions", captions.tolist())):
        ttft, tpot = measure(engine, prompts, images, retrieved, args.new, args.repeats)
        print(f"{label:22} {ttft * 1e3:8.2f} {tpot * 1e3:8.2f}")


if __name__ == "__main__":
    main()
