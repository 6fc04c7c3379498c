"""Tensor parallelism's per-rank memory and communication (docs/parallel.md): weight and state bytes held by
each rank, and the bytes the collectives move per decode step, counted by zoo.parallel's wrapped
collectives beside the analytic volume (one all-reduce of batch x d_model per row-parallel sublayer and the
embedding, plus the all-gather of batch x padded vocabulary logits).

    torchrun --nproc-per-node 2 -m zoo bench llama-tiny --tp 2 --batch 4 --prompt-len 32 --gen-len 16
    python -m zoo bench llama-tiny --tp 1 ...   (TP 1: a group of one process)
"""

import torch

from zoo.parallel.layers import ReduceOutput, RowParallelLinear, padded_vocab


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_reductions(model: torch.nn.Module) -> int:
    """All-reduces of one decode step: every row-parallel layer on the decoder's path, and the embedding
    (an encoder, run once in prefill, does not count)."""
    encoder = getattr(model, "encoder", None)
    skipped = {id(m) for m in encoder.modules()} if encoder is not None else set()
    reducing = [m for m in model.modules() if isinstance(m, (RowParallelLinear, ReduceOutput)) and id(m) not in skipped]
    return len(reducing) + 1


def analytic_decode_bytes(model, tp_size: int, batch: int, dtype: torch.dtype) -> dict:
    c = model.config
    item = torch.empty((), dtype=dtype).element_size()
    reduce_bytes = decode_reductions(model) * batch * c.d_model * item if tp_size > 1 else 0
    gather_bytes = batch * padded_vocab(c.vocab_size, tp_size) * item if tp_size > 1 else 0
    return {"all_reduce": reduce_bytes, "all_gather": gather_bytes}


def measure(target: str, tp, device, batch: int, prompt_len: int, gen_len: int, dtype: torch.dtype, seed: int) -> dict:
    """One point: weights and state per rank, counted and analytic collective bytes per decode step."""
    from runtime import Engine
    from zoo.parallel import tensor_parallel
    from zoo.registry import load_model

    model = load_model(target, dtype=dtype, seed=seed, device=device)
    full_weights = parameter_bytes(model)
    sharded = tensor_parallel(model, tp)
    engine = Engine(sharded, "torch")
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=generator).tolist()
    engine.generate_with_stats(prompts, 1)  # warm up
    tp.counter.reset()
    engine.generate_with_stats(prompts, 1)
    prefill = tp.counter.snapshot()
    tp.counter.reset()
    result = engine.generate_with_stats(prompts, gen_len)
    total = tp.counter.snapshot()
    steps = max(gen_len - 1, 1)
    per_step = {
        kind: {key: (total[kind][key] - prefill[kind][key]) / steps for key in ("calls", "bytes")} for kind in total
    }
    return {
        "target": target,
        "tp": tp.size,
        "batch": batch,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "dtype": str(dtype).removeprefix("torch."),
        "weight_bytes_unsharded": full_weights,
        "weight_bytes_per_rank": parameter_bytes(sharded),
        "state_bytes_per_rank": result.state_bytes,
        "prefill_collectives": prefill,
        "decode_collectives_per_step": per_step,
        "decode_bytes_per_step_analytic": analytic_decode_bytes(sharded.module, tp.size, batch, dtype),
    }


def table_rows(report: list[dict]) -> list[list[str]]:
    rows = []
    for r in report:
        step, analytic = r["decode_collectives_per_step"], r["decode_bytes_per_step_analytic"]
        rows.append(
            [
                f"{r['tp']}",
                f"{r['batch']}x{r['prompt_len']}+{r['gen_len']}",
                f"{r['weight_bytes_per_rank']:,}",
                f"{r['weight_bytes_unsharded']:,}",
                f"{r['state_bytes_per_rank']:,}",
                f"{step['all_reduce']['calls']:.0f} / {step['all_reduce']['bytes']:,.0f}",
                f"{analytic['all_reduce']:,}",
                f"{step['all_gather']['calls']:.0f} / {step['all_gather']['bytes']:,.0f}",
                f"{analytic['all_gather']:,}",
            ]
        )
    return rows


COLUMNS = [
    "tp",
    "batch x prompt + gen",
    "weights B/rank",
    "weights B (TP 1)",
    "state B/rank",
    "all-reduce calls / B per step",
    "analytic",
    "all-gather calls / B per step",
    "analytic",
]
