"""The op library and the compiler core, measured side by side in one run (CPU, fp32).

1. Every op's CPU implementation against its reference, at a decode size and a prefill size.
2. Per family, decode TPOT and prefill TTFT of the engine with the reference kernels ("eager": plain
   torch everywhere), with the ops' CPU kernels ("fused eager"), and compiled (torch.compile with the zoo
   backend, CPU kernels).
3. llama-small: the compiled decode step at batch 1 and 8 as a share of the roofline bound (the
   machine's measured bandwidth and matmul throughput, as `zoo bench` computes it), and the compiled
   prefill TTFT at prompt 1024 against HF transformers' (its `generate` with one new token).

    python -m benchmarks.fused [--repeats 5] [--skip-hf] [--families llama-small,mamba2-small,...]
"""

import argparse
import statistics

import torch

import zoo.ops
from benchmarks import machine
from benchmarks.roofline import decode_step_cost
from runtime import Engine
from zoo.models.dmc.retrofit import dmc_from_llama
from zoo.models.moe.upcycle import upcycle
from zoo.registry import build

FAMILIES = ("llama-small", "dmc-small", "mamba2-small", "mamba2-hybrid-small", "moe-small")


def rand(*shape, generator, dtype=torch.float32):
    return torch.randn(*shape, generator=generator).to(dtype)


def op_cases(generator) -> dict[str, dict[str, tuple]]:
    """Arguments of every op at a decode size (batch 4, one token) and a prefill size (batch 1, 1024 tokens),
    with llama-small / mamba2-small widths: d 512, 8 heads of 64 (4 KV heads), d_ff 1408, Mamba-2 16 heads of
    64, state 128, conv 4; DMC cache of 1024 slots; MoE 64 experts of 256, top-8."""
    g = generator

    def token_rows(rows):
        d, f, h, hd = 512, 1408, 8, 64
        return {
            "rms_norm": (rand(rows, d, generator=g), 1 + rand(d, generator=g), 1e-5),
            "add_rms_norm": (rand(rows, d, generator=g), rand(rows, d, generator=g), 1 + rand(d, generator=g), 1e-5),
            "gated_rms_norm": (
                rand(rows, 1024, generator=g),
                rand(rows, 1024, generator=g),
                rand(1024, generator=g),
                1024,
                1e-5,
            ),
            "swiglu": (rand(rows, f, generator=g), rand(rows, f, generator=g)),
            "rope": (
                rand(1, h, rows, hd, generator=g),
                rand(1, 1, rows, hd, generator=g),
                rand(1, 1, rows, hd, generator=g),
            ),
            "moe_experts": (
                rand(rows, d, generator=g),
                rand(rows, 64, generator=g),
                rand(64, 512, d, generator=g) * 0.05,
                rand(64, d, 256, generator=g) * 0.05,
                8,
                "softmax-topk",
                "silu",
                True,
            ),
        }

    def mamba(b, L):
        h, p, n, dim = 16, 64, 128, 1024 + 2 * 128
        x, dt = rand(b, L, h, p, generator=g), torch.rand(b, L, h, generator=g) * 0.1
        A, B, C = -torch.rand(h, generator=g), rand(b, L, 1, n, generator=g), rand(b, L, 1, n, generator=g)
        return {
            "ssd_chunk_scan": (x, dt, A, B, C, torch.zeros(b, h, p, n), 256),
            "causal_conv1d": (
                rand(b, L, dim, generator=g),
                rand(dim, 4, generator=g),
                rand(dim, generator=g),
                torch.full((b,), L),
            ),
        }

    def mamba_step(b):
        h, p, n, dim = 16, 64, 128, 1024 + 2 * 128
        return {
            "ssd_state_update": (
                rand(b, h, p, n, generator=g),
                rand(b, h, p, generator=g),
                rand(b, h, generator=g),
                -torch.rand(h, generator=g),
                rand(b, 1, n, generator=g),
                rand(b, 1, n, generator=g),
                torch.ones(h),
                torch.zeros(h),
                0.0,
                float("inf"),
            ),
            "causal_conv1d_update": (
                rand(b, dim, 4, generator=g),
                rand(b, dim, generator=g),
                rand(dim, 4, generator=g),
                rand(dim, generator=g),
            ),
        }

    def dmc_decode(b, slots=1024, hkv=4, h=8, d=64, window=12):
        cache = rand(b, hkv, slots + 1, d, generator=g)
        return (
            rand(b, h, d, generator=g), rand(b, hkv, d, generator=g), rand(b, hkv, d, generator=g),
            rand(b, d, generator=g), rand(b, d, generator=g), torch.full((b,), 4 * slots), cache, cache.clone(),
            torch.full((b, hkv), slots), rand(b, hkv, d, generator=g), rand(b, hkv, d, generator=g),
            torch.ones(b, hkv), torch.full((b, hkv), 3.0), rand(b, hkv, window, d, generator=g),
            rand(b, hkv, window, d, generator=g), torch.ones(b, hkv, window), 5.0, window, d**-0.5, 0,
        )  # fmt: skip

    def dmc_prefill(b, L, hkv=4, d=64, window=12):
        alpha = (torch.rand(b, hkv, L, generator=g) > 0.5).float()
        alpha[..., 0] = 0
        return (
            alpha, torch.rand(b, hkv, L, generator=g) + 0.5, rand(b, hkv, L, 2 * d, generator=g),
            rand(b, hkv, L, 2 * d, generator=g), torch.rand(b, hkv, L, generator=g) + 1,
            rand(b, hkv, L, d, generator=g), rand(b, hkv, L, d, generator=g), torch.full((b,), L), L, window,
        )  # fmt: skip

    decode = token_rows(4) | mamba_step(4) | {"dmc_decode_attention": dmc_decode(4)}
    prefill = token_rows(1024) | mamba(1, 1024) | {"dmc_prefill_cache": dmc_prefill(1, 1024)}
    return {"decode (batch 4)": decode, "prefill (1024 tokens)": prefill}


def op_table(repeats: int) -> list[list[str]]:
    from zoo.ops.registry import zoo_ops

    rows = []
    ops = zoo_ops()
    for size, cases in op_cases(torch.Generator().manual_seed(0)).items():
        for name, args in cases.items():
            op = ops[name].overload
            times = {}
            for choice in ("reference", "cpu"):
                with zoo.ops.kernel_choice(choice), torch.inference_mode():
                    times[choice] = machine.median_time(lambda: op(*args), repeats)
            ratio = times["reference"] / times["cpu"]
            rows.append([name, size, f"{times['reference'] * 1e3:.3f}", f"{times['cpu'] * 1e3:.3f}", f"{ratio:.2f}x"])
    return rows


def family_model(name: str):
    """llama-small and the other families at its width: the registered small sizes, DMC converted from
    llama-small (decisions from its weights), an 8-expert top-2 MoE upcycled from it."""
    if name == "dmc-small":
        return dmc_from_llama(build("llama-small"))
    if name == "moe-small":
        return upcycle(build("llama-small"), 8, 1, 2, "topk-softmax", seed=0)
    return build(name)


def timed_request(engine: Engine, prompts: list[list[int]], new_tokens: int, repeats: int) -> tuple[float, float]:
    results = [engine.generate_with_stats(prompts, new_tokens) for _ in range(repeats)]
    return statistics.median(r.ttft_s for r in results), statistics.median(r.tpot_s for r in results)


def family_table(families, repeats: int, batch: int = 1, prompt: int = 256, new_tokens: int = 32) -> list[list[str]]:
    rows = []
    for name in families:
        model = family_model(name)
        prompts = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(1))
        prompts = prompts.tolist()
        figures = {}
        for label, backend, choice in (
            ("eager", "torch", "reference"),
            ("fused eager", "torch", "cpu"),
            ("compiled", "compiled", "cpu"),
        ):
            with zoo.ops.kernel_choice(choice):
                engine = Engine.from_model(model, backend)
                engine.warmup(prompts, new_tokens)
                figures[label] = timed_request(engine, prompts, new_tokens, repeats)
        eager_ttft, eager_tpot = figures["eager"]
        row = [name]
        for label in ("eager", "fused eager", "compiled"):
            ttft, tpot = figures[label]
            row += [f"{ttft * 1e3:.1f} ({ttft / eager_ttft:.2f}x)", f"{tpot * 1e3:.2f} ({tpot / eager_tpot:.2f}x)"]
        rows.append(row)
    return rows


def llama_targets(repeats: int, skip_hf: bool) -> list[str]:
    lines = []
    model = build("llama-small")
    config = model.config
    bandwidth = machine.measure_read_bandwidth()
    flops = machine.measure_matmul_flops()
    for batch in (1, 8):
        prompts = torch.randint(0, config.vocab_size, (batch, 128), generator=torch.Generator().manual_seed(2)).tolist()
        engine = Engine.from_model(model, "compiled")
        engine.warmup(prompts, 64)
        _, tpot = timed_request(engine, prompts, 64, repeats)
        bound = decode_step_cost(config, batch, 128 + 32, torch.float32).lower_bound_s(bandwidth, flops)
        lines.append(
            f"llama-small compiled decode, batch {batch}: TPOT {tpot * 1e3:.2f} ms, bound {bound * 1e3:.2f} ms, "
            f"roofline {100 * bound / tpot:.0f}%"
        )
    prompt = torch.randint(0, config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(3)).tolist()
    engine = Engine.from_model(model, "compiled")
    engine.warmup(prompt, 2)
    ttft, _ = timed_request(engine, prompt, 2, repeats)
    line = f"llama-small compiled prefill TTFT at prompt 1024: {ttft * 1e3:.1f} ms"
    if not skip_hf:
        hf_ttft = hf_prefill_seconds(config, prompt, repeats)
        line += f"; HF generate (1 new token) {hf_ttft * 1e3:.1f} ms: {ttft / hf_ttft:.2f}x"
    lines.append(line)
    return lines


def hf_prefill_seconds(config, prompt: list[list[int]], repeats: int) -> float:
    from zoo.registry import build_hf_twin

    hf_model = build_hf_twin(config, seed=0)
    ids = torch.tensor(prompt)

    def one_token():
        with torch.inference_mode():
            hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)

    return machine.median_time(one_token, repeats)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print_table(
        "ops: CPU implementation against reference (median ms)",
        ["op", "size", "reference", "cpu", "speed-up"],
        op_table(args.repeats),
    )
    families = [f for f in args.families.split(",") if f]
    columns = ["model", "eager TTFT ms", "eager TPOT ms", "fused TTFT", "fused TPOT", "compiled TTFT", "compiled TPOT"]
    print_table(
        "families: batch 1, prompt 256, 32 new tokens (ratios against eager)",
        columns,
        family_table(families, args.repeats),
    )
    print()
    for line in llama_targets(args.repeats, args.skip_hf):
        print(line)


if __name__ == "__main__":
    main()
