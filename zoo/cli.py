"""The `zoo` command line. Each command is a thin wrapper over a library function."""

import json
import sys
from pathlib import Path

import click

from zoo.errors import ZooError

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, DTYPES[name])


class ZooGroup(click.Group):
    """Turns ZooError (bad input) into a one-line error and exit code 1, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """graph-zoo: efficient LLM architectures, compiled to fused graphs, ONNX and TensorRT."""


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of a table.")
def list_command(as_json: bool):
    """List the registered models (name, family, parameters, layers, width, context)."""
    from zoo.registry import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    shown = [{**r, "params": human_count(r["params"])} for r in rows]
    click.echo(format_table(shown, ["name", "family", "params", "layers", "d_model", "context"]))


@main.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(name: str, as_json: bool):
    """Describe a model NAME (or checkpoint directory): parameters, layers, cache bytes per token."""
    import torch

    from zoo.registry import get_config, is_checkpoint_dir, load_config

    config = load_config(name)[0] if is_checkpoint_dir(name) else get_config(name)
    info = {
        "name": name,
        "family": config.family,
        "params": config.num_params(),
        "layers": config.n_layers,
        "d_model": config.d_model,
        "heads": config.n_heads,
        "kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "context": config.max_seq_len,
        "vocab": config.vocab_size,
        "cache_bytes_per_token_fp16": config.cache_bytes_per_token(torch.float16),
        "cache_bytes_per_token_fp32": config.cache_bytes_per_token(torch.float32),
        "config": config.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key == "config":
            continue
        if key == "params":
            value = f"{value:,} ({human_count(value)})"
        elif key.startswith("cache_bytes"):
            value = f"{value:,} ({human_bytes(value)})"
        click.echo(f"{key:28s} {value}")


def parse_prompt_ids(values: tuple[str, ...]) -> list[list[int]]:
    prompts = []
    for value in values:
        try:
            prompts.append([int(t) for t in value.replace(" ", "").split(",") if t])
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint="--prompt-ids")
    return prompts


def load_tokenizer(path: str):
    tokenizer_file = Path(path) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ZooError(f"--prompt needs a checkpoint directory with tokenizer.json; {path} has none (use --prompt-ids)")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file))


@main.command("generate")
@click.argument("model")
@click.option("--prompt-ids", multiple=True, help="Comma-separated token ids; repeat for a batch.")
@click.option("--prompt", "prompt_texts", multiple=True, help="Text (needs tokenizer.json in MODEL); repeatable.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 is greedy.")
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed and random-weight seed.")
@click.option("--eos-id", type=int, multiple=True, help="Stop a prompt after this token id; repeatable.")
@click.option("--backend", default="torch", show_default=True, type=click.Choice(["torch", "compiled"]))
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None, help="Default: the checkpoint's dtype (float32 for names).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the tokens and timings.")
def generate_command(model, prompt_ids, prompt_texts, max_new_tokens, temperature, top_k, top_p, seed, eos_id, backend, dtype, as_json):
    """Generate from MODEL, a registered name (seeded random weights) or a checkpoint directory."""
    from runtime import Engine

    if bool(prompt_ids) == bool(prompt_texts):
        raise click.UsageError("give either --prompt-ids or --prompt")
    tokenizer = load_tokenizer(model) if prompt_texts else None
    prompts = parse_prompt_ids(prompt_ids) if prompt_ids else [tokenizer.encode(t).ids for t in prompt_texts]
    engine = Engine.load(model, backend=backend, dtype=torch_dtype(dtype), seed=seed)
    if backend == "compiled":
        click.echo(f"compiled the decode step in {engine.warmup(prompts, max_new_tokens):.1f} s", err=True)
    result = engine.generate_with_stats(
        prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        eos_token_id=list(eos_id) or None,
    )
    texts = [tokenizer.decode(t) for t in result.tokens] if tokenizer else None
    if as_json:
        out = {"model": model, "backend": backend, "prompts": prompts, "tokens": result.tokens,
               "ttft_s": result.ttft_s, "tpot_s": result.tpot_s}
        if texts is not None:
            out["text"] = texts
        click.echo(json.dumps(out))
        return
    for i, tokens in enumerate(result.tokens):
        click.echo(f"[{i}] {texts[i] if texts else ','.join(map(str, tokens))}")
    tpot = f", TPOT {result.tpot_s * 1e3:.2f} ms" if result.tpot_s is not None else ""
    click.echo(f"TTFT {result.ttft_s * 1e3:.2f} ms{tpot}", err=True)


if __name__ == "__main__":
    sys.exit(main())
