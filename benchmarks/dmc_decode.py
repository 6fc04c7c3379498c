"""Issue 3's figure: DMC models whose decisions are set to give compression ratios 1, 2, 4 and 8
(DMCConfig.dmc_merge_period = CR: every CR-th token opens a slot), beside the plain Llama of the same size and
weights, at context 512, 2048 and 8192, in one run: cache bytes in use and decode TPOT (batch 1, fp32),
eager and compiled. Each configuration decodes from its own prefilled state, in rounds that time every
configuration once, and the median round is reported. The DMC cache is allocated for context / CR slots
plus the new tokens, as a compressed cache is; the Llama's for the whole context. Targets: DMC cache
bytes <= 1.1 / CR of the Llama's; at 8192 and CR 4, TPOT <= 0.6x the Llama's. First, the throughput at
a fixed cache budget: DMC CR 4 serving batch 4 in the cache memory of one Llama sequence at the longest
context (target: >= 3x the Llama's tokens/s).

    python -m benchmarks.dmc_decode [--new-tokens 32] [--repeats 5] [--contexts 512,2048,8192]
        [--backends torch,compiled] [--budget-only]
"""

import argparse
import statistics
import time

import torch

from runtime.engine import decode_step_of
from zoo.models.dmc.retrofit import dmc_from_llama
from zoo.models.llama import LlamaConfig
from zoo.registry import build_from_config

CONTEXTS = (512, 2048, 8192)
RATIOS = (1, 2, 4, 8)
# llama-small's width with multi-head attention (8 KV heads, as Llama-2 and the released DMC models),
# so that at long context the KV cache weighs as much as the weights
CONFIG = LlamaConfig(
    vocab_size=32000, d_model=512, n_layers=8, n_heads=8, d_ff=1408, max_seq_len=8192 + 256, tie_embeddings=True
)


def prefilled(model, context: int, slots: int, batch: int = 1) -> dict:
    """The decode state after a one-shot prefill of `batch` copies of a seeded random prompt of `context`
    tokens, prefilled one row at a time (a DMC prefill's attention bias is quadratic in the length)."""
    prompt = torch.randint(0, CONFIG.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        state = model.init_state(1, slots)
        model.prefill(prompt, torch.tensor([context]), state)
    return {name: tensor.expand(batch, *tensor.shape[1:]).clone() for name, tensor in state.items()}


def timed_decode(step, prefill_state: dict, context: int, new_tokens: int) -> tuple[float, dict]:
    """(seconds per token over new_tokens - 1 decode steps after one untimed step, from a copy of the
    prefilled state; the state it ended with)."""
    state = {name: tensor.clone() for name, tensor in prefill_state.items()}
    batch = state["k0"].shape[0]
    token = torch.ones(batch, dtype=torch.long)
    with torch.inference_mode():
        step(token, torch.full((batch,), context), state)
        start = time.perf_counter()
        for t in range(1, new_tokens):
            step(token, torch.full((batch,), context + t), state)
    return (time.perf_counter() - start) / (new_tokens - 1), state


def interleaved_tpot(steps: dict, states: dict, context: int, new_tokens: int, repeats: int):
    """Median TPOT per configuration, over `repeats` rounds that each time every configuration once, so
    that a slow spell of the machine hits all of them alike; and each one's final state."""
    for name, step in steps.items():  # warm-up (compiles the compiled backend)
        timed_decode(step, states[name], context, 2)
    times, finals = {name: [] for name in steps}, {}
    for _ in range(repeats):
        for name, step in steps.items():
            seconds, finals[name] = timed_decode(step, states[name], context, new_tokens)
            times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}, finals


def cache_bytes_in_use(model, state: dict, tokens: int) -> int:
    """Llama: every cached token's K and V. DMC: the slots in use plus each head's running sums and ring."""
    c = model.config
    slot_bytes = 2 * c.head_dim * 4  # K and V, fp32
    if c.attention != "dmc":
        return c.n_layers * c.n_kv_heads * tokens * slot_bytes
    fixed = sum(
        state[f"{name}{i}"].nbytes
        for i in range(c.n_layers)
        for name in ("ksum", "vsum", "z", "glen", "ring_k", "ring_v", "ring_z", "slots")
    )
    return sum(state[f"slots{i}"].sum().item() for i in range(c.n_layers)) * slot_bytes + fixed


def fixed_budget_throughput(llama, context: int, new_tokens: int, repeats: int, backend: str, ratio: int = 4):
    """The paper's throughput argument, measured: with the KV-cache memory of one Llama sequence of
    `context` tokens, DMC at CR `ratio` holds `ratio` sequences. Prints tokens/s of the Llama at batch 1
    and of DMC at batch `ratio` in that budget (target: >= 3x at CR 4)."""
    dmc = dmc_from_llama(llama, merge_period=ratio)
    torch._dynamo.reset()
    steps = {"llama": decode_step_of(llama, backend), "dmc": decode_step_of(dmc, backend)}
    states = {
        "llama": prefilled(llama, context, context + new_tokens),
        "dmc": prefilled(dmc, context, -(-context // ratio) + new_tokens, batch=ratio),
    }
    tpot, finals = interleaved_tpot(steps, states, context, new_tokens, repeats)
    budget = cache_bytes_in_use(llama, {}, context + new_tokens)
    used = cache_bytes_in_use(dmc, finals["dmc"], ratio * (context + new_tokens))
    llama_rate, dmc_rate = 1 / tpot["llama"], ratio / tpot["dmc"]
    print(
        f"fixed cache budget ({backend}): Llama batch 1 at {context} tokens, {budget / 2**20:.1f} MiB: "
        f"{llama_rate:.1f} tokens/s; DMC CR{ratio} batch {ratio}, {used / 2**20:.1f} MiB: {dmc_rate:.1f} tokens/s "
        f"({dmc_rate / llama_rate:.2f}x)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    parser.add_argument("--backends", default="torch,compiled", help="comma-separated: torch, compiled")
    parser.add_argument(
        "--budget-only", action="store_true", help="only the fixed-cache-budget throughput at the longest context"
    )
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    backends = args.backends.split(",")
    llama = build_from_config(CONFIG, seed=0)
    for backend in backends:
        fixed_budget_throughput(llama, max(contexts), args.new_tokens, args.repeats, backend)
    if args.budget_only:
        return
    models, ratios = {"llama": llama}, {"llama": None}
    for ratio in RATIOS:  # one model per ratio (same weights), so that every configuration stays compiled
        name = f"DMC CR{ratio}"
        models[name], ratios[name] = dmc_from_llama(llama, merge_period=ratio), ratio
    print(
        f"{CONFIG.num_params() / 1e6:.1f}M params, MHA 8x64, fp32, batch 1, {args.new_tokens} new tokens, "
        f"median of {args.repeats} interleaved rounds, {torch.get_num_threads()} threads; TPOT in ms, and its "
        "ratio to the Llama's"
    )
    print(
        f"{'context':>7s} {'model':>8s} {'cache MiB':>10s} {'bytes ratio':>11s} {'x CR':>6s} "
        + " ".join(f"{b + ' TPOT':>14s} {'ratio':>6s}" for b in backends)
    )
    for context in contexts:
        # the Llama's cache holds every token; a DMC cache context / CR slots plus the new tokens
        slots = {name: -(-context // (ratio or 1)) + args.new_tokens for name, ratio in ratios.items()}
        states = {name: prefilled(model, context, slots[name]) for name, model in models.items()}
        tpot = {}
        for backend in backends:
            torch._dynamo.reset()  # five graphs per context, well under dynamo's recompile limit
            steps = {name: decode_step_of(model, backend) for name, model in models.items()}
            tpot[backend], finals = interleaved_tpot(steps, states, context, args.new_tokens, args.repeats)
        llama_bytes = cache_bytes_in_use(llama, {}, context + args.new_tokens)
        for name, model in models.items():
            used, ratio = cache_bytes_in_use(model, finals[name], context + args.new_tokens), ratios[name]
            share = used / llama_bytes
            times_cr = f"{share * ratio:6.2f}" if ratio else " " * 6
            timings = " ".join(
                f"{tpot[b][name] * 1e3:14.2f} {tpot[b][name] / tpot[b]['llama']:5.2f}x" for b in backends
            )
            print(f"{context:7d} {name:>8s} {used / 2**20:10.2f} {share:11.3f} {times_cr} {timings}")


if __name__ == "__main__":
    main()
