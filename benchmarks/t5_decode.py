"""t5-v1_1-small decode TPOT with and without the cross-attention cache, side by side in one run.

With the cache (the t5 family's prefill): every decoder layer's cross-attention K, V of the encoder output
are computed once per request and read by every step. Without: each step recomputes them from the encoder
output (kept from the prefill), as a decoder with no cross cache must; everything else is the same code.
The two are timed in alternation, step by step, on one model and one greedy token sequence.

    python -m benchmarks.t5_decode [--encoder-length 512] [--new-tokens 16] [--batch 1] [--repeats 3] [--threads N]
"""

import argparse
import statistics
import time

import torch

from runtime import Engine
from zoo.models.t5 import SIZES, T5LM


def step_times(model, ids, lengths, new_tokens: int, recompute_cross: bool) -> list[float]:
    """Seconds of each decode step after the prefill (greedy), optionally recomputing the cross cache first."""
    state = model.init_state(ids.shape[0], max(ids.shape[1], new_tokens))
    logits, state = model.prefill(ids, lengths, state)
    encoded = model.encode(ids, lengths) if recompute_cross else None
    times = []
    for position in range(1, new_tokens):
        tokens = logits.argmax(-1)
        start = time.perf_counter()
        if recompute_cross:
            model.write_cross_cache(encoded, lengths, state)
        logits, state = model.decode_step(tokens, torch.full_like(lengths, position), state)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="t5-v1_1-small", choices=sorted(SIZES))
    parser.add_argument("--encoder-length", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # on a loaded machine, more threads than free cores run slower

    torch.manual_seed(0)
    engine = Engine(T5LM(SIZES[args.model]).eval())  # the torch runner: CPU weights laid out as it serves them
    engine.runner.prepare(args.batch)
    model = engine.model
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (args.batch, args.encoder_length), generator=generator)
    lengths = torch.full((args.batch,), args.encoder_length)
    cached, uncached = [], []
    with torch.inference_mode():
        step_times(model, ids, lengths, 3, recompute_cross=True)  # warm-up
        for _ in range(args.repeats):
            cached += step_times(model, ids, lengths, args.new_tokens, recompute_cross=False)
            uncached += step_times(model, ids, lengths, args.new_tokens, recompute_cross=True)
        engine_tpot = statistics.median(
            engine.generate_with_stats(ids.tolist(), args.new_tokens).tpot_s for _ in range(args.repeats)
        )
    with_cache, without = statistics.median(cached), statistics.median(uncached)
    print(
        f"{args.model}, encoder length {args.encoder_length}, batch {args.batch}, {args.new_tokens} new tokens, "
        f"{torch.get_num_threads()} threads, median of {len(cached)} steps each"
    )
    print(f"{'decode step':<40}{'TPOT ms':>10}")
    print(f"{'with the cross cache':<40}{with_cache * 1e3:>10.2f}")
    print(f"{'recomputing cross K/V every step':<40}{without * 1e3:>10.2f}")
    print(f"{'Engine.generate (with the cross cache)':<40}{engine_tpot * 1e3:>10.2f}")
    print(f"speed-up of the cross cache: {without / with_cache:.2f}x")


if __name__ == "__main__":
    main()
