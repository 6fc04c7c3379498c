"""The `zoo` command line. Each command is a thin wrapper over a library function."""

import json
import math
import sys
from pathlib import Path

import click

from zoo.errors import ZooError

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


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


TABLE_WIDTH = 100  # `zoo list` and `zoo info` fit a 100-column terminal


def print_table(title: str | None, columns: list[str], rows: list[list[str]], right: tuple[str, ...] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=TABLE_WIDTH, soft_wrap=False, highlight=False).print(table)


def status_line(text: str, quiet: bool):
    """A spinner with `text` on stderr while a slow step runs (nothing with `quiet`, e.g. under --json)."""
    import contextlib

    if quiet:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(text)


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
    """graph-zoo: efficient LLM architectures in readable PyTorch. List and inspect the registered models,
    generate with the eager or torch.compile backend, convert checkpoints (DMC retrofit, MoE upcycling)
    and benchmark latency.

    Exit codes: 0 success; 1 bad input or a failed operation, reported on one line starting "Error:";
    2 a usage error (a missing, unknown or malformed option)."""


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of a table.")
def list_command(as_json: bool):
    """List the registered models (name, family, parameters, layers, width, context)."""
    from zoo.registry import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = ["name", "family", "params", "layers", "d_model", "context"]
    shown = [[r["name"], r["family"], human_count(r["params"]), *(f"{r[c]:,}" for c in columns[3:])] for r in rows]
    print_table(None, columns, shown, right=("params", "layers", "d_model", "context"))


@main.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(name: str, as_json: bool):
    """Describe a model NAME (or checkpoint directory): parameters, layers, cache bytes per token (attention
    KV caches) and state bytes per sequence (recurrent states, whatever the length)."""
    import torch

    from zoo.registry import get_config, is_checkpoint_dir, load_config

    config = load_config(name)[0] if is_checkpoint_dir(name) else get_config(name)
    info = {
        "name": name,
        "family": config.family,
        "params": config.num_params(),
        "layers": config.n_layers,
        "d_model": config.d_model,
        "context": config.max_seq_len,
        "vocab": config.vocab_size,
        "cache_bytes_per_token_fp16": config.cache_bytes_per_token(torch.float16),
        "cache_bytes_per_token_fp32": config.cache_bytes_per_token(torch.float32),
        "state_bytes_per_sequence_fp16": config.state_bytes_per_sequence(torch.float16),
        "state_bytes_per_sequence_fp32": config.state_bytes_per_sequence(torch.float32),
        "config": config.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = []
    for key, value in info.items():
        if key == "config":
            continue
        if key == "params":
            value = f"{value:,} ({human_count(value)})"
        elif key.startswith(("cache_bytes", "state_bytes")):
            value = f"{value:,} ({human_bytes(value)})"
        elif isinstance(value, int):
            value = f"{value:,}"
        rows.append([key, str(value)])
    print_table(None, ["field", "value"], rows)


def parse_int_list(value: str, option: str) -> list[int]:
    """'1,2, 3' -> [1, 2, 3]; an empty list or an empty item ('1,,2') is a usage error."""
    items = value.replace(" ", "").split(",")
    try:
        numbers = [int(t) for t in items]
    except ValueError:
        empty = "" in items
        what = "has an empty item" if empty else "is not a comma-separated list of integers"
        raise click.BadParameter(f"{value!r} {what}", param_hint=option) from None
    return numbers


def parse_prompt_ids(values: tuple[str, ...]) -> list[list[int]]:
    return [parse_int_list(value, "--prompt-ids") for value in values]


def load_tokenizer(path: str):
    tokenizer_file = Path(path) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ZooError(f"--prompt needs a checkpoint directory with tokenizer.json; {path} has none (use --prompt-ids)")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise ZooError(f"{tokenizer_file} is not a valid tokenizers file: {str(exc).splitlines()[0]}") from exc


def option_group(*options):
    """A decorator applying click options in the order listed (as if stacked top to bottom)."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def request_options(seed_help: str):
    """The options `generate` and `run` share: prompts as ids, length, sampling, EOS, JSON output."""
    return option_group(
        click.option("--prompt-ids", multiple=True, help="Comma-separated token ids; repeat for a batch."),
        click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1)),
        click.option("--temperature", default=0.0, show_default=True, type=float, help="0 is greedy; must be >= 0."),
        click.option("--top-k", type=int, default=None, help="Sample from the k most likely tokens (k >= 1)."),
        click.option(
            "--top-p",
            type=float,
            default=None,
            help="Nucleus sampling: the smallest set with mass >= p, p in (0, 1].",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help=seed_help),
        click.option("--eos-id", type=int, multiple=True, help="Stop a prompt after this token id; repeatable."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON object with the tokens and timings."),
    )


def generate_and_print(engine, source: str, prompts, max_new_tokens, sampling: dict, as_json: bool, tokenizer=None):
    """Generate and print: one line per prompt (its new ids, or text with a tokenizer) and the timings on
    stderr, or with --json one object {"model", "backend", "prompts", "tokens", "ttft_s", "tpot_s", ...}."""
    result = engine.generate_with_stats(prompts, max_new_tokens, **sampling)
    texts = [tokenizer.decode(t) for t in result.tokens] if tokenizer else None
    tpot = None if math.isnan(result.tpot_s) else result.tpot_s  # JSON has no NaN
    if as_json:
        out = {
            "model": source,
            "backend": engine.backend,
            "prompts": prompts,
            "tokens": result.tokens,
            "ttft_s": result.ttft_s,
            "tpot_s": tpot,
            **result.state_summary,
        }
        if texts is not None:
            out["text"] = texts
        click.echo(json.dumps(out))
        return
    for i, tokens in enumerate(result.tokens):
        click.echo(f"[{i}] {texts[i] if texts else ','.join(map(str, tokens))}")
    timing = f"TTFT {result.ttft_s * 1e3:.2f} ms" + ("" if tpot is None else f", TPOT {tpot * 1e3:.2f} ms")
    if "compression" in result.state_summary:
        per_layer = ", ".join(f"{r:.2f}" for r in result.state_summary["compression"]["per_layer"])
        timing += f"; DMC compression {result.state_summary['compression']['overall']:.2f}x (per layer: {per_layer})"
    click.echo(timing, err=True)


tp_option = click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=None,
    help="Tensor-parallel degree: launch one process per rank with `torchrun --nproc-per-node P -m zoo ...` "
    "(gloo on CPU, NCCL on GPUs; only rank 0 prints). Torch backend only.",
)


def tensor_parallel_model(name_or_path: str, tp: int, backend: str, dtype, seed: int):
    """MODEL loaded on every rank and sharded for this one (zoo.parallel), after the launch checks."""
    from runtime.distributed import init_tensor_parallel, print_on_main_only
    from zoo.parallel import tensor_parallel
    from zoo.registry import load_model

    if backend != "torch":
        raise ZooError(f"--tp runs on the torch backend (eager collectives); not on {backend}")
    group, device = init_tensor_parallel(tp)
    print_on_main_only()
    return tensor_parallel(load_model(name_or_path, dtype=dtype, seed=seed, device=device), group)


# --image, --index and --k (`zoo generate` and `zoo run`; media_request reads them).
media_options = option_group(
    click.option(
        "--image",
        "image_files",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="For a model that reads images (revilm): one image file per prompt, or one for all; repeatable.",
    ),
    click.option(
        "--index",
        "index_path",
        type=click.Path(file_okay=False),
        default=None,
        help="An image index (`zoo index build`): each --image retrieves the captions of its nearest images.",
    ),
    click.option(
        "--k",
        "neighbors",
        type=click.IntRange(min=1),
        default=None,
        help="Captions retrieved per image [model's].",
    ),
)


def media_request(engine, image_files, index_path, neighbors, batch: int) -> dict:
    """generate_with_stats' images= and retrieved= from --image, --index and --k ({} for a text request)."""
    if not image_files:
        if index_path is not None or neighbors is not None:
            raise click.UsageError("--index and --k retrieve captions for an image: give --image too")
        return {}
    config = engine.config
    if not getattr(engine.runner, "takes_media", False):
        raise ZooError(f"the {config.family} family reads text only; --image is for a model that reads images (revilm)")
    if len(image_files) not in (1, batch):
        raise click.UsageError(f"give one --image per prompt ({batch}) or one for all; got {len(image_files)}")
    from runtime.images import load_image

    pixels = torch_stack([load_image(f, config.vision.image_size) for f in image_files], batch)
    if index_path is None:
        if config.retrieval_layers:
            raise ZooError(
                f"the {config.family} model cross-attends to retrieved captions: give --index (`zoo index build`)"
            )
        return {"images": pixels}
    from runtime.retrieval import retrieve

    embedder = getattr(engine.runner, "model", engine.runner)  # an artifact's runner embeds with its media graph
    found = retrieve(embedder, index_path, pixels, neighbors or config.n_neighbors)
    return {"images": pixels, "retrieved": [[n.caption_ids for n in row] for row in found]}


def torch_stack(images: list, batch: int):
    """(batch, ...) pixels from one image per prompt, or from one image repeated."""
    import torch

    pixels = torch.stack(images)
    return pixels.expand(batch, *pixels.shape[1:]).contiguous() if len(images) == 1 else pixels


@main.command("generate")
@click.argument("model")
@click.option("--prompt", "prompt_texts", multiple=True, help="Text (needs tokenizer.json in MODEL); repeatable.")
@request_options(seed_help="Sampling seed and random-weight seed.")
@click.option(
    "--backend",
    default="torch",
    show_default=True,
    type=click.Choice(["torch", "compiled", "onnxruntime"]),
    help="onnxruntime runs an exported artifact directory (`zoo export`; see also `zoo run`).",
)
@click.option(
    "--dtype",
    type=click.Choice(sorted(DTYPES)),
    default=None,
    help="Default: the checkpoint's dtype (float32 for names).",
)
@tp_option
@media_options
def generate_command(
    model,
    prompt_texts,
    prompt_ids,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    eos_id,
    as_json,
    backend,
    dtype,
    tp,
    image_files,
    index_path,
    neighbors,
):
    """Generate from MODEL, a registered name (seeded random weights) or a checkpoint directory."""
    from runtime import Engine
    from runtime.sampling import validate_sampling

    if bool(prompt_ids) == bool(prompt_texts):
        raise click.UsageError("give either --prompt-ids or --prompt")
    validate_sampling(temperature, top_k, top_p)
    tokenizer = load_tokenizer(model) if prompt_texts else None
    prompts = parse_prompt_ids(prompt_ids) if prompt_ids else [tokenizer.encode(t).ids for t in prompt_texts]
    if tp is not None:
        engine = Engine(tensor_parallel_model(model, tp, backend, torch_dtype(dtype), seed), "torch")
    else:
        engine = Engine.load(model, backend=backend, dtype=torch_dtype(dtype), seed=seed)
    engine.check_request(prompts, max_new_tokens, set(eos_id))  # before a slow compile
    media = media_request(engine, image_files, index_path, neighbors, len(prompts))
    if backend == "compiled":
        with status_line("compiling prefill and decode step (torch.compile)", quiet=as_json):
            seconds = engine.warmup(prompts, max_new_tokens, **media)
        if not as_json:
            click.echo(f"compiled prefill and decode step in {seconds:.1f} s", err=True)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_token_id=list(eos_id) or None)
    generate_and_print(engine, model, prompts, max_new_tokens, sampling | media, as_json, tokenizer)


@main.command("run")
@click.argument("artifact")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    show_default=True,
    help="ONNX Runtime, or the TensorRT engines of a `zoo export --format tensorrt` artifact (needs TensorRT and "
    "a GPU).",
)
@request_options(seed_help="Sampling seed.")
@media_options
def run_command(
    artifact,
    backend,
    prompt_ids,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    eos_id,
    as_json,
    image_files,
    index_path,
    neighbors,
):
    """Generate from ARTIFACT, a directory written by `zoo export`, on ONNX Runtime or TensorRT (checked first:
    manifest version, zoo ops, every file's sha256). Output as `zoo generate`; an image model's artifact
    (revilm) takes --image and --index as there, and runs its media graph on ONNX Runtime."""
    from runtime import Engine
    from runtime.sampling import validate_sampling

    if not prompt_ids:
        raise click.UsageError("give --prompt-ids")
    validate_sampling(temperature, top_k, top_p)
    prompts = parse_prompt_ids(prompt_ids)
    runtime_name = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}[backend]
    with status_line(f"loading {artifact} into {runtime_name}", quiet=as_json):
        engine = Engine.load_artifact(artifact, backend=backend)
    engine.check_request(prompts, max_new_tokens, set(eos_id))  # before the retrieval
    media = media_request(engine, image_files, index_path, neighbors, len(prompts))
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_token_id=list(eos_id) or None)
    generate_and_print(engine, artifact, prompts, max_new_tokens, sampling | media, as_json)


@main.command("upcycle")
@click.option("--from", "source", required=True, help="Dense llama-family checkpoint directory (or a model name).")
@click.option("--experts", type=click.IntRange(min=1), required=True, help="Total experts N = E * G.")
@click.option("--granularity", type=click.IntRange(min=1), default=1, show_default=True, help="G: shards per FFN.")
@click.option("--top-k", type=click.IntRange(min=1), required=True)
@click.option(
    "--routing", type=click.Choice(["softmax-topk", "topk-softmax"]), default="softmax-topk", show_default=True
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Router initialisation (and random weights of a name)."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write the MoE checkpoint.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing zoo checkpoint at --out (other files in it are kept). A non-empty directory "
    "that is not a zoo checkpoint is always refused.",
)
def upcycle_command(source, experts, granularity, top_k, routing, seed, out, overwrite):
    """Upcycle a dense model into a fine-grained MoE (virtual-group initialisation and weight scaling,
    docs/algorithms.md section 3.2)."""
    from zoo.checkpoint import check_output_directory
    from zoo.models.moe.upcycle import upcycle
    from zoo.registry import load_model, save_pretrained

    check_output_directory(out, overwrite)  # before any work
    moe = upcycle(load_model(source, seed=seed), experts, granularity, top_k, routing, seed=seed)
    save_pretrained(moe, out, overwrite=overwrite)
    c = moe.config
    click.echo(
        f"wrote {out}: {c.n_experts} experts of width {c.d_expert}, top-{c.top_k}, {c.routing}, "
        f"{c.num_params():,} parameters ({c.active_params():,} active per token)"
    )


@main.command("reshard")
@click.option(
    "--from", "source", required=True, help="Megatron-Core checkpoint directory (mp_rank_00 .. mp_rank_{p-1})."
)
@click.option("--tp", type=click.IntRange(min=1), required=True, help="Tensor-parallel degree to write; 1 merges.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="The checkpoint directory to write.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a checkpoint that `zoo reshard` wrote at --out. Any other non-empty directory is refused.",
)
def reshard_command(source, tp, out, overwrite):
    """Merge or re-shard a Megatron-Core tensor-parallel checkpoint (GPT, Llama-style or DMC) to --tp ranks,
    written as OUT/release/mp_rank_XX/model_optim_rng.pt (loadable by every zoo command, also with --tp)."""
    from zoo.parallel.megatron import reshard

    path = reshard(source, tp, out, overwrite)
    click.echo(f"wrote {path}: {tp} tensor-parallel rank{'s' if tp > 1 else ''}")


@main.command("retrofit-dmc")
@click.option("--from", "source", required=True, help="Llama-family checkpoint directory (HF or zoo format) or name.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write the DMC checkpoint.")
@click.option("--window", type=click.IntRange(min=0), default=12, show_default=True, help="0: unbounded mean.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random weights of a model name.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing zoo checkpoint at --out (other files in it are kept). A non-empty directory "
    "that is not a zoo checkpoint is always refused.",
)
def retrofit_dmc_command(source, out, window, seed, overwrite):
    """Turn a Llama checkpoint into a DMC checkpoint (stage 1 of the recipe: decision rows zeroed)."""
    from zoo.checkpoint import check_output_directory
    from zoo.models.dmc.retrofit import dmc_from_llama
    from zoo.registry import load_model, save_pretrained

    check_output_directory(out, overwrite)  # before any work
    model = dmc_from_llama(load_model(source, seed=seed), window=window)
    save_pretrained(model, out, overwrite=overwrite)
    click.echo(f"wrote {out}: DMC ({model.config.n_layers} layers, window {window}), decision rows zeroed")


@main.command("passes")
@click.argument("model")
@click.option("--phase", type=click.Choice(["prefill", "decode"]), default="decode", show_default=True)
@click.option("--unfused", is_flag=True, help="Run the decomposition (standard ATen ops only) instead of fusion.")
@click.option("--disable", "disabled", multiple=True, help="Skip the pass of this name; repeatable.")
@click.option("--debug", is_flag=True, help="Check after every pass that the outputs still match the captured graph.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random weights of a model name.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of pass records.")
def passes_command(model, phase, unfused, disabled, debug, seed, as_json):
    """Capture MODEL's prefill or decode step (torch.export, dynamic batch and lengths) and run the graph
    passes over it: each pass with its hits, time and the graph's op counts before and after."""
    from passes.capture import capture
    from passes.manager import PassManager, fused_pipeline, unfused_pipeline
    from zoo.registry import load_model

    pipeline = unfused_pipeline() if unfused else fused_pipeline()
    manager = PassManager(pipeline, disabled, debug)  # checks the pass names before the slow capture
    with status_line(f"capturing the {phase} step", quiet=as_json):
        captured = capture(load_model(model, seed=seed), phase)
    with status_line("running the passes", quiet=as_json):
        _, records = manager.run(captured.program, captured.example_args)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    rows = []
    for r in records:
        hits = ", ".join(f"{k} {v}" for k, v in r.hits_by_kind.items()) or str(r.hits)
        zoo_before = sum(n for op, n in r.ops_before.items() if op.startswith("zoo."))
        zoo_after = sum(n for op, n in r.ops_after.items() if op.startswith("zoo."))
        rows.append(
            [
                r.name,
                hits if r.enabled else "disabled",
                f"{r.seconds * 1e3:.1f}",
                f"{sum(r.ops_before.values())} -> {sum(r.ops_after.values())}",
                f"{zoo_before} -> {zoo_after}",
            ]
        )
    title = f"{model} {phase} step: {'unfused' if unfused else 'fused'} pipeline"
    print_table(title, ["pass", "hits", "ms", "ops", "zoo ops"], rows, right=("ms", "ops", "zoo ops"))


@main.command("kernels")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def kernels_command(as_json):
    """Compile every Triton kernel of the op library for sm_90 (H100), without a GPU: PTX bytes, registers,
    spills, shared memory and warps of each."""
    from zoo.errors import require

    require("triton", "triton")
    from zoo.ops.triton_aot import compile_all

    with status_line("compiling the Triton kernels for sm_90", quiet=as_json):
        results = compile_all(90)
    failures = sum(not r["ok"] for r in results)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        rows = [
            [
                r["op"],
                r["name"],
                "ok",
                str(r["ptx_bytes"]),
                str(r["registers"]),
                str(r["spill_bytes"]),
                str(r["shared_bytes"]),
                str(r["num_warps"]),
            ]
            if r["ok"]
            else [r["op"], r["name"], f"FAILED: {r['error'][:40]}", "", "", "", "", ""]
            for r in results
        ]
        columns = ["op", "kernel", "sm_90", "PTX bytes", "regs", "spills", "shared", "warps"]
        print_table("Triton kernels compiled for sm_90", columns, rows, right=tuple(columns[3:]))
    if failures:
        raise ZooError(f"{failures} of {len(results)} kernels failed to compile for sm_90")


@main.command("export")
@click.argument("model")
@click.option("--format", "format_", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True)
@click.option("--fused/--unfused", default=True, show_default=True, help="zoo-domain op nodes, or standard ops only.")
@click.option(
    "--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None, help="Default: the model's."
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=None,
    help="--format tensorrt: the largest batch the engines' profiles take (default 8).",
)
@click.option(
    "--max-seq",
    type=click.IntRange(min=1),
    default=None,
    help="--format tensorrt: the longest prompt and cache the engines' profiles take (default: the model's "
    "context, at most 4096).",
)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="The artifact directory to write.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing artifact at --out (other files in it are kept). A non-empty directory that is "
    "not an artifact is always refused.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random weights of a model name.")
@click.option(
    "--quant",
    type=click.Choice(["int8", "fp8", "int4-awq"]),
    default=None,
    help="Quantize the linear layers with nvidia-modelopt first (calibrated on a text the project ships); the "
    "graphs hold QuantizeLinear/DequantizeLinear nodes. Needs a float32 model.",
)
def export_command(model, format_, fused, dtype, max_batch, max_seq, quant, out, overwrite, seed):
    """Export MODEL (a registered name or checkpoint directory) as an artifact directory: its prefill and
    decode step as ONNX graphs (dynamic batch, prompt and cache lengths) and a manifest with sha256 hashes.

    --format tensorrt adds TensorRT-ready copies of the graphs (zoo nodes as TensorRT plugin nodes), the
    plugins' kernels, and, where TensorRT and a CUDA GPU are present, strongly typed engines with one
    optimisation profile each (batch 1 to --max-batch, prompt and cache 1 to --max-seq); elsewhere it says
    so and prints the command that builds them on a GPU machine."""
    from zoo.checkpoint import check_output_directory

    if format_ != "tensorrt" and (max_batch is not None or max_seq is not None):
        raise click.UsageError("--max-batch and --max-seq apply to --format tensorrt only")
    from export.artifact import is_artifact
    from zoo.registry import load_model

    check_output_directory(out, overwrite, holds_ours=is_artifact, kind="zoo artifact")  # before any work
    loaded = load_model(model, dtype=torch_dtype(dtype), seed=seed)
    kind = "fused" if fused else "unfused"
    manifest_extra = None
    if quant is not None:
        from export.quantize import export_form, quantize

        with status_line(f"quantizing {model} to {quant} (modelopt, calibrating)", quiet=False):
            quantized = quantize(loaded, quant)
        manifest_extra = {"quantization": quantized.quantization.to_dict()}
        loaded, kind = export_form(quantized), f"{kind}, {quant}"
    if format_ == "onnx":
        from export.onnx import export_onnx

        with status_line(f"exporting {model} to ONNX ({kind})", quiet=False):
            path = export_onnx(loaded, out, fused=fused, overwrite=overwrite, manifest_extra=manifest_extra)
        graphs = (
            "prefill.onnx, decode.onnx and media.onnx"
            if getattr(loaded, "takes_media", False)
            else "prefill.onnx and decode.onnx"
        )
        click.echo(f"wrote {path}: {loaded.config.family} {graphs} ({kind})")
        return
    from export.tensorrt import DEFAULT_MAX_BATCH, export_tensorrt

    context = loaded.config.max_seq_len
    if max_seq is not None and max_seq > context:
        raise click.BadParameter(f"{max_seq} exceeds the model's context of {context}", param_hint="--max-seq")
    with status_line(f"exporting {model} for TensorRT ({kind})", quiet=False):
        path, section, missing = export_tensorrt(
            loaded,
            out,
            max_batch or DEFAULT_MAX_BATCH,
            max_seq,
            fused=fused,
            overwrite=overwrite,
            manifest_extra=manifest_extra,
        )
    axes = ", ".join(f"{axis} {'/'.join(map(str, sizes))}" for axis, sizes in section["axes"].items())
    click.echo(f"wrote {path}: {loaded.config.family} prefill and decode for TensorRT ({kind}; min/opt/max {axes})")
    if section["aot_payloads_note"]:
        click.echo(f"note: no plugin kernels written: {section['aot_payloads_note']}", err=True)
    if section["ops_without_plugins"]:
        names = ", ".join(section["ops_without_plugins"])
        click.echo(f"note: zoo ops without a TensorRT plugin (no engine builds until they have one): {names}", err=True)
    if missing is None:
        click.echo(f"built {', '.join(section['engines']['files'].values())}")
        return
    click.echo(f"note: no engines built: {missing}", err=True)
    click.echo(f"build the engines on a machine with TensorRT and a CUDA GPU: {section['build_command']}")
    plugins = any(graph["plugin_nodes"] for graph in section["graphs"].values())
    if plugins:
        click.echo("(trtexec cannot build them: it loads plugins from shared libraries, the zoo's are Python)")
    for phase in section["graphs"]:
        command = section["trtexec_commands"].get(phase)
        if command is None:
            click.echo(f"(the {phase} engine calls JIT plugins, which run in Python: trtexec cannot run it)")
        else:
            click.echo(f"{'time' if plugins else 'or build'} the {phase} engine with trtexec: {command}")


def int_list(ctx, param, value: str) -> tuple[int, ...]:
    return tuple(parse_int_list(value, param.opts[0])) if value.strip() else ()


def name_list(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for value in values for v in value.replace(" ", "").split(",") if v))


@main.command("bench")
@click.argument("target")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    default=("torch",),
    show_default=True,
    callback=name_list,
    help="Comma-separated or repeated: torch, compiled, onnxruntime, onnxruntime-unfused (the model exported to "
    "a temporary fused or unfused ONNX artifact first); an artifact TARGET runs on onnxruntime only.",
)
@click.option("--batch", default="1", show_default=True, callback=int_list, help="Comma-separated batch sizes.")
@click.option(
    "--prompt-len", default="128", show_default=True, callback=int_list, help="Comma-separated prompt lengths."
)
@click.option(
    "--gen-len", default="128", show_default=True, callback=int_list, help="Comma-separated numbers of new tokens."
)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0), help="Unmeasured runs per point.")
@click.option(
    "--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Measured runs per point (medians)."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Prompts and random weights.")
@click.option(
    "--compare",
    default=None,
    help="Comma-separated peers run on the same weights, with ratio tables: hf (transformers' generate), "
    "ort-genai (onnxruntime-genai; llama family, the genai extra).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the full report here (its directory must exist; an existing file must be an earlier report).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG of TPOT curves and bars (its directory must exist; an existing file must be an earlier plot).",
)
@tp_option
def bench_command(
    target, backends, batch, prompt_len, gen_len, dtype, warmup, repeats, seed, compare, json_path, plot_path, tp
):
    """Latency grid for TARGET (a model name or checkpoint directory): TTFT, TPOT, ITL percentiles,
    end-to-end latency, tokens/s, peak memory, cache bytes, a roofline bound and reference-machine times.

    With --tp P (under torchrun): per-rank weight and state bytes and the bytes the collectives move per
    decode step, counted and analytic (benchmarks/tp_memory.py), for every point of the grid."""
    if tp is not None:
        tp_bench(target, backends, batch, prompt_len, gen_len, dtype, seed, compare, json_path, plot_path, tp)
        return
    from rich.console import Console
    from rich.progress import Progress

    from benchmarks.harness import Grid, check_outputs, peers_of, plot, run_bench, write_json_atomically

    check_outputs(json_path, plot_path)  # before the benchmark runs
    grid = Grid(backends, batch, prompt_len, gen_len, dtype=dtype, warmup=warmup, repeats=repeats, seed=seed)
    points = len(grid.points()) * (len(backends) + len(peers_of(compare)))
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("starting", total=points)
        report = run_bench(
            target,
            grid,
            compare=compare,
            progress=lambda n: progress.advance(task, n),
            status=lambda text: progress.update(task, description=text),
        )
    print_bench_tables(report)
    if json_path:
        write_json_atomically(report, json_path)
        console.print(f"wrote {json_path}")
    if plot_path:
        plot(report, plot_path)
        console.print(f"wrote {plot_path}")


def tp_bench(target, backends, batch, prompt_len, gen_len, dtype, seed, compare, json_path, plot_path, tp):
    from benchmarks import tp_memory
    from benchmarks.harness import check_outputs, write_json_atomically
    from runtime.distributed import init_tensor_parallel, is_main_process, print_on_main_only

    if backends != ("torch",) or compare or plot_path:
        raise click.UsageError(
            "--tp measures the torch backend's memory and collectives: no --backend, --compare, --plot"
        )
    if is_main_process():
        check_outputs(json_path, None)
    group, device = init_tensor_parallel(tp)
    print_on_main_only()
    report = [
        tp_memory.measure(target, group, device, b, p, g, torch_dtype(dtype), seed)
        for b in batch
        for p in prompt_len
        for g in gen_len
    ]
    print_table(f"zoo bench {target} --tp {tp} ({dtype}): per rank", tp_memory.COLUMNS, [*tp_memory.table_rows(report)])
    if json_path and is_main_process():
        write_json_atomically({"tensor_parallel": report}, json_path)
        click.echo(f"wrote {json_path}", err=True)


def print_bench_tables(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = report["machine"]
    table = Table(
        title=f"zoo bench {report['target']} ({report['model']['family']}, {human_count(report['model']['params'])} "
        f"params, {report['grid']['dtype']}); read {m['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
        f"matmul {m['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, calibration {m['calibration_s'] * 1e3:.0f} ms "
        f"(reference {m['reference_calibration_s'] * 1e3:.0f} ms)"
    )
    headers = [
        "runner",
        "batch",
        "prompt",
        "gen",
        "TTFT ms",
        "TPOT ms",
        "ITL p50/p90/p99 ms",
        "e2e ms",
        "tok/s",
        "peak MiB (+req)",
        "state MiB",
        "bound ms",
        "roofline %",
        "TPOT ref ms",
    ]
    for h in headers:
        table.add_column(h, justify="left" if h == "runner" else "right")
    for r in report["results"]:
        s = r["summary"]
        table.add_row(
            r["runner"],
            str(r["batch"]),
            str(r["prompt_len"]),
            str(r["gen_len"]),
            f"{s['ttft_s'] * 1e3:.1f}",
            f"{s['tpot_s'] * 1e3:.2f}",
            f"{s['itl_p50_s'] * 1e3:.2f}/{s['itl_p90_s'] * 1e3:.2f}/{s['itl_p99_s'] * 1e3:.2f}",
            f"{s['e2e_s'] * 1e3:.1f}",
            f"{s['output_tokens_per_s']:.0f}",
            f"{s['peak_memory_bytes'] / 2**20:.0f} (+{s['peak_memory_delta_bytes'] / 2**20:.1f})",
            f"{s['state_bytes'] / 2**20:.2f}",
            f"{s['roofline_lower_bound_s'] * 1e3:.2f}",
            f"{s['roofline_pct']:.0f}",
            f"{s['reference_s']['tpot_s'] * 1e3:.2f}",
        )
    console = Console(width=220)
    console.print(table)
    for peer in dict.fromkeys(c["peer"] for c in report["comparisons"]):
        ratios = Table(title=f"ratios against {peer} (below 1: the zoo is faster / smaller; tok/s: above 1 is faster)")
        for h in [
            "runner",
            "batch",
            "prompt",
            "gen",
            "TTFT",
            "TPOT",
            "ITL p50",
            "ITL p90",
            "ITL p99",
            "e2e",
            "tok/s",
            "req mem",
            "state",
        ]:
            ratios.add_column(h, justify="left" if h == "runner" else "right")
        keys = [
            "ttft_s",
            "tpot_s",
            "itl_p50_s",
            "itl_p90_s",
            "itl_p99_s",
            "e2e_s",
            "output_tokens_per_s",
            "peak_memory_delta_bytes",
            "state_bytes",
        ]
        for c in report["comparisons"]:
            if c["peer"] != peer:
                continue
            values = [c["ratios"][k] for k in keys]
            ratios.add_row(
                c["runner"],
                str(c["batch"]),
                str(c["prompt_len"]),
                str(c["gen_len"]),
                *("n/a" if v is None else f"{v:.2f}x" for v in values),
            )
        console.print(ratios)
    for note in report.get("notes", []):
        console.print(f"note: {note}")


@click.group("index")
def index_group():
    """Image indexes for retrieval (revilm): build one from a directory of images and a captions file, add
    images without retraining, query it with an image."""


embedding_model_options = option_group(
    click.option(
        "--model",
        default="revilm-tiny",
        show_default=True,
        help="The revilm model (name or checkpoint directory) whose vision tower embeds the images.",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Random weights of a model name."),
)


database_options = option_group(
    click.option("--images", "images_dir", required=True, type=click.Path(), help="Directory of image files."),
    click.option(
        "--captions",
        "captions_file",
        required=True,
        type=click.Path(),
        help='JSON object mapping each image file name to its caption: {"cat.png": "a cat", ...}.',
    ),
    click.option(
        "--tokenizer",
        "tokenizer_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="tokenizer.json for the captions' token ids (default: UTF-8 bytes modulo the vocabulary).",
    ),
)


@index_group.command("build")
@database_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="The index directory to write.")
@click.option(
    "--index-type",
    type=click.Choice(["auto", "flat", "ivf"]),
    default="auto",
    show_default=True,
    help="auto: exact below 50,000 images, IVF from there.",
)
@click.option("--overwrite", is_flag=True, help="Replace an index this command wrote before.")
@embedding_model_options
def index_build_command(images_dir, captions_file, tokenizer_file, out, index_type, overwrite, model, seed):
    """Embed every image of --images with MODEL's vision tower and write an index of them with their captions."""
    from runtime.retrieval import build_index
    from zoo.registry import load_model

    embedder = load_model(model, seed=seed)
    index = build_index(embedder, images_dir, captions_file, out, tokenizer_file, index_type, overwrite)
    click.echo(f"indexed {len(index)} images ({index.meta['index_type']}, {index.meta['dim']} dims) into {out}")


@index_group.command("add")
@click.argument("index_path", metavar="INDEX")
@database_options
@embedding_model_options
def index_add_command(index_path, images_dir, captions_file, tokenizer_file, model, seed):
    """Add the images of --images and their captions to INDEX (no retraining; the same model and tokenizer)."""
    from runtime.retrieval import add_to_index
    from zoo.registry import load_model

    index = add_to_index(load_model(model, seed=seed), index_path, images_dir, captions_file, tokenizer_file)
    click.echo(f"{index_path} now holds {len(index)} images")


@index_group.command("query")
@click.argument("index_path", metavar="INDEX")
@click.option("--image", "image_file", required=True, type=click.Path(dir_okay=False), help="The query image.")
@click.option("--k", type=click.IntRange(min=1), default=4, show_default=True, help="Neighbours to return.")
@click.option(
    "--duplicate-threshold",
    type=click.FloatRange(-1.0, 1.0),
    default=0.98,
    show_default=True,
    help="Leave out neighbours whose cosine similarity to the query is above this (near-duplicates).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {id, score, caption}.")
@embedding_model_options
def index_query_command(index_path, image_file, k, duplicate_threshold, as_json, model, seed):
    """The captions of the k images of INDEX nearest to --image (cosine similarity of CLIP embeddings)."""
    from runtime.images import load_image
    from runtime.retrieval import retrieve
    from zoo.registry import load_model

    embedder = load_model(model, seed=seed)
    if not hasattr(embedder, "embed_image"):
        raise ZooError(f"the {embedder.config.family} family has no image encoder; use a revilm model")
    pixels = load_image(image_file, embedder.config.vision.image_size)[None]
    neighbors = retrieve(embedder, index_path, pixels, k, duplicate_threshold)[0]
    rows = [{"id": n.id, "score": n.score, "caption": n.caption} for n in neighbors]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['score']:.4f}  [{row['id']}] {row['caption']}")


main.add_command(index_group)


if __name__ == "__main__":
    sys.exit(main())
