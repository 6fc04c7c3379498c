"""Issue 4's figures, measured side by side in one run:

1. mamba2 decode TPOT at context 256, 2048 and 8192 (target: 8192 within 1.15x of 256);
2. the hybrid's TPOT beside a Llama of similar size at context 8192;
3. chunked-SSD prefill against the sequential recurrence at length 2048 (target: >= 10x faster), for
   the SSD op alone (one layer's shapes) and for a whole model's prefill (chunked prefill against
   feeding the 2048 tokens one decode step at a time).

    python -m benchmarks.mamba2_decode [--backend torch] [--new-tokens 32] [--repeats 3]
"""

import argparse
import dataclasses
import statistics

import torch

import zoo
from benchmarks.machine import median_time
from runtime import Engine
from zoo.ops.ssd_chunk_scan import ssd_chunk_scan
from zoo.ops.ssd_state_update import ssd_state_update
from zoo.registry import build_from_config

CONTEXTS = (256, 2048, 8192)


def decode_tpot(engine: Engine, context: int, new_tokens: int, repeats: int) -> float:
    prompt = torch.randint(0, engine.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    engine.warmup(prompt.tolist(), new_tokens)
    return statistics.median(engine.generate_with_stats(prompt.tolist(), new_tokens).tpot_s for _ in range(repeats))


def ssd_op_times(length: int, repeats: int) -> tuple[float, float]:
    """One mamba2-small layer's SSD (16 heads x 64 x state 128, 1 group, chunk 256), batch 1: zoo::ssd_chunk_scan
    against zoo::ssd_state_update called once per position (both with the kernel choice in force)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, length, 16, 64, generator=g)
    dt = torch.rand(1, length, 16, generator=g) * 0.1
    A = -torch.rand(16, generator=g) * 8
    B, C = torch.randn(1, length, 1, 128, generator=g), torch.randn(1, length, 1, 128, generator=g)
    zero_state, no_skip, no_bias = torch.zeros(1, 16, 64, 128), torch.zeros(16), torch.zeros(16)
    dt_raw = torch.log(torch.expm1(dt))  # the step op applies softplus itself

    def sequential():
        state = zero_state
        for t in range(length):
            _, state = ssd_state_update(
                state, x[:, t], dt_raw[:, t], A, B[:, t], C[:, t], no_skip, no_bias, 0.0, float("inf")
            )

    chunked = median_time(lambda: ssd_chunk_scan(x, dt, A, B, C, zero_state, 256), repeats)
    return chunked, median_time(sequential, max(1, repeats // 2))


def model_prefill_times(model, length: int) -> tuple[float, float]:
    """Chunked prefill of `length` tokens against the same tokens fed one recurrent decode step at a time."""
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([length])

    def chunked():
        model.prefill(ids, lengths, model.init_state(1, length))

    def recurrent():
        state = model.init_state(1, length)
        for t in range(length):
            model.decode_step(ids[:, t], torch.tensor([t]), state)

    with torch.inference_mode():
        return median_time(chunked, 3), median_time(recurrent, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="torch", choices=["torch", "compiled"])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(
        f"{torch.get_num_threads()} threads, fp32, batch 1, backend {args.backend}, {args.new_tokens} new tokens, "
        f"median of {args.repeats}\n"
    )

    mamba = Engine.from_model(zoo.build("mamba2-small"), args.backend)
    tpot = {ctx: decode_tpot(mamba, ctx, args.new_tokens, args.repeats) for ctx in CONTEXTS}
    print("1. mamba2-small (44M) decode TPOT against context")
    for ctx in CONTEXTS:
        print(f"   context {ctx:5d}: {tpot[ctx] * 1e3:7.2f} ms  ({tpot[ctx] / tpot[256]:.2f}x of context 256)")

    long_context = 8192
    llama_config = dataclasses.replace(zoo.get_config("llama-small"), max_seq_len=long_context + 256)
    hybrid = Engine.from_model(zoo.build("mamba2-hybrid-small"), args.backend)
    llama = Engine.from_model(build_from_config(llama_config), args.backend)
    hybrid_tpot = decode_tpot(hybrid, long_context, args.new_tokens, args.repeats)
    llama_tpot = decode_tpot(llama, long_context, args.new_tokens, args.repeats)
    print(f"\n2. TPOT at context {long_context}")
    for name, engine, value in (("mamba2-hybrid-small", hybrid, hybrid_tpot), ("llama-small", llama, llama_tpot)):
        config = engine.config
        state_mib = config.state_bytes(1, long_context, torch.float32) / 2**20
        print(
            f"   {name:20s} {config.num_params() / 1e6:5.1f}M params  {value * 1e3:7.2f} ms  "
            f"state {state_mib:7.1f} MiB  ({value / llama_tpot:.2f}x of llama)"
        )

    length = 2048
    op_chunked, op_sequential = ssd_op_times(length, args.repeats)
    model_chunked, model_recurrent = model_prefill_times(mamba.model, length)
    print(f"\n3. prefill of {length} tokens: chunked SSD against the sequential recurrence")
    print(
        "   the SSD op alone (one layer, chunk 256): chunked against a per-step loop:\n"
        f"                          chunked {op_chunked * 1e3:8.1f} ms  per-step   {op_sequential * 1e3:8.1f} ms  "
        f"{op_sequential / op_chunked:5.1f}x"
    )
    print(
        f"   mamba2-small prefill:  chunked {model_chunked * 1e3:8.1f} ms  recurrent  {model_recurrent * 1e3:8.1f} ms  "
        f"{model_recurrent / model_chunked:5.1f}x"
    )


if __name__ == "__main__":
    main()
