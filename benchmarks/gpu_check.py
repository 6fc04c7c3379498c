"""`make gpu-check`: one unattended check of the TensorRT path on a machine with an NVIDIA GPU.

    python -m benchmarks.gpu_check --out DIR [--models llama-tiny,mamba2-small] [--dry-run]

It installs nothing (the Makefile target installs the `tensorrt` and `gpu` extras first). For every
text family's tiny and small model (MODEL_SIZES; a family without a small size is checked at its tiny
size; revilm, which reads images, is not checked here):
1. `zoo export MODEL --format tensorrt --max-batch B --max-seq L` (TensorRT-ready ONNX, and the engines
   where TensorRT and a GPU are present) and `zoo export MODEL --format onnx`, as subprocesses, on the
   same seeded weights;
2. loads three runners: TensorRT (`Engine.load(DIR, backend="tensorrt")`), ONNX Runtime on its CUDA
   provider, and torch (eager, the model on CUDA);
3. greedy tokens of each on a fixed batch of prompts of different lengths (PROMPT_LENGTHS), compared
   pairwise;
4. TTFT (prefill) and TPOT (decode) of each at TIMING_POINTS, with the bench harness (benchmarks/harness.py:
   warm-up runs, then medians of the measured runs).
Every step runs on its own: an exception is recorded in the step and the run goes on (a step that needs
a failed one is recorded as skipped). The whole refuses to start, in one line, without CUDA; --dry-run
prints the plan (models, commands, output files) and runs nothing.

Output in DIR: gpu_check.json (below), gpu_check.txt (the summary it also prints), artifacts/<model>/.

gpu_check.json:
{
  "schema_version": 1,
  "started": ISO time, "finished": ISO time,
  "environment": {"python", "torch", "cuda", "gpu", "packages": {distribution: version or null}},
  "settings": {"dtype", "seed", "max_batch", "prompt_lengths", "new_tokens",
               "timing_points": [{"batch", "prompt_len", "gen_len"}], "warmup", "repeats"},
  "models": {
    MODEL: {
      "family": str, "max_seq": int,
      "steps": [{"step": str, "ok": bool, "skipped": bool, "seconds": float,
                 "error": str or null (one line), "traceback": str or null, "detail": object or null}],
      "runners": {RUNNER: {"tokens": [[int]] or null,
                           "timing": [{"batch", "prompt_len", "gen_len", "ttft_s", "tpot_s"}]}},
      "agreement": {"A~B": {"identical": bool, "matching_prefix": [int per prompt], "new_tokens": int}}
    }
  },
  "summary": {"models": int, "steps": int, "failed_steps": int, "skipped_steps": int,
              "tokens_identical": {"A~B": [models where A and B gave identical tokens]}}
}
RUNNER is one of RUNNERS; "A~B" a pair of runners that both produced tokens; a step's detail holds what it
measured (an export's command and files, a runner's provider).
"""

import argparse
import datetime
import importlib.metadata
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import torch

from zoo.errors import ZooError

MODEL_SIZES = ("tiny", "small")  # registered names "<family>-tiny", "<family>-small"
RUNNERS = ("tensorrt", "onnxruntime-cuda", "torch")
PROMPT_LENGTHS = (3, 11, 29)  # one batch of prompts of different lengths
NEW_TOKENS = 16
TIMING_POINTS = ((1, 64, 32), (8, 64, 32))  # (batch, prompt length, new tokens)
MAX_BATCH = 8
MAX_SEQ = 256  # the engines' longest sequence (clipped to a model's context)
WARMUP, REPEATS = 1, 3
EXPORT_TIMEOUT_S = 3600
REPORT_FILE, SUMMARY_FILE = "gpu_check.json", "gpu_check.txt"
PACKAGES = ("tensorrt", "torch-tensorrt", "onnxruntime-gpu", "onnxruntime", "triton")
NO_CUDA = "gpu-check needs an NVIDIA GPU with CUDA: torch.cuda.is_available() is False on this machine"


@dataclass(frozen=True)
class ModelPlan:
    name: str
    family: str
    max_seq: int
    tensorrt_dir: Path
    onnx_dir: Path
    commands: dict  # step name -> argv of its `zoo export`


def default_models() -> list[str]:
    from zoo.registry import FAMILIES

    return [
        f"{family}-{size}"
        for family, f in FAMILIES.items()
        for size in MODEL_SIZES
        if f"{family}-{size}" in f.sizes and not getattr(f.model_cls, "takes_media", False)
    ]  # a model that reads images (revilm) needs an image per prompt, which this check's text prompts lack


def export_command(name: str, format_: str, out: Path, seed: int, dtype: str, max_batch: int, max_seq: int):
    command = [sys.executable, "-m", "zoo.cli", "export", name, "--format", format_, "-o", str(out)]
    if format_ == "tensorrt":
        command += ["--max-batch", str(max_batch), "--max-seq", str(max_seq)]
    return command + ["--dtype", dtype, "--seed", str(seed), "--overwrite"]


def plan(out: Path, models: list[str], seed: int = 0, dtype: str = "float32", max_batch: int = MAX_BATCH):
    """One ModelPlan per model, in order; unknown names and prompts that do not fit are errors."""
    from zoo.registry import get_config

    longest = max(max(PROMPT_LENGTHS) + NEW_TOKENS, *(p + g for _, p, g in TIMING_POINTS))
    widest = max(len(PROMPT_LENGTHS), *(b for b, _, _ in TIMING_POINTS))
    if max_batch < widest:
        raise ZooError(f"--max-batch {max_batch} is below the check's largest batch, {widest}")
    plans = []
    for name in models:
        config = get_config(name)  # UnknownModelError lists the known names
        max_seq = min(MAX_SEQ, config.max_seq_len)
        if longest > max_seq:
            raise ZooError(f"{name}: the check's longest request ({longest} tokens) exceeds its context {max_seq}")
        directory = out / "artifacts" / name
        trt_dir, onnx_dir = directory / "tensorrt", directory / "onnx"
        commands = {
            "export-tensorrt": export_command(name, "tensorrt", trt_dir, seed, dtype, max_batch, max_seq),
            "export-onnx": export_command(name, "onnx", onnx_dir, seed, dtype, max_batch, max_seq),
        }
        plans.append(ModelPlan(name, config.family, max_seq, trt_dir, onnx_dir, commands))
    return plans


def describe_plan(out: Path, plans: list[ModelPlan]) -> str:
    lines = [f"gpu-check plan: {len(plans)} models, runners {', '.join(RUNNERS)}"]
    checked = {p.name for p in plans}
    tiny_only = [p.family for p in plans if p.name.endswith("-tiny") and f"{p.family}-small" not in checked]
    if tiny_only:
        lines.append(f"checked at their tiny size only (no small size, or not asked for): {', '.join(tiny_only)}")
    for p in plans:
        lines.append(f"{p.name} ({p.family}, max seq {p.max_seq}):")
        lines += [f"  {step}: {' '.join(command)}" for step, command in p.commands.items()]
        lengths = ", ".join(map(str, PROMPT_LENGTHS))
        lines.append(f"  tokens: one batch of prompts of lengths {lengths}, {NEW_TOKENS} greedy tokens each, compared")
        points = ", ".join(f"batch {b} prompt {pl} gen {g}" for b, pl, g in TIMING_POINTS)
        lines.append(f"  timing (TTFT, TPOT; {WARMUP} warm-up, median of {REPEATS}): {points}")
    lines.append(f"writes: {out / REPORT_FILE}, {out / SUMMARY_FILE}, {out / 'artifacts'}/<model>/")
    return "\n".join(lines)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class Steps:
    """The step records of one model: each step runs on its own, its exception recorded."""

    def __init__(self):
        self.records: list[dict] = []

    def run(self, step: str, fn, needs=()):
        """fn()'s value, or None when it raised or a step it needs (a value in `needs`) is None."""
        record = {"step": step, "ok": False, "skipped": False, "seconds": 0.0, "error": None, "traceback": None}
        record["detail"] = None
        self.records.append(record)
        if any(value is None for value in needs):
            record.update(skipped=True, error="skipped: a step it needs failed")
            return None
        start = time.perf_counter()
        try:
            value = fn(record)
        except Exception as exc:  # recorded: one model's failure must not stop the run
            record.update(error=one_line(exc), traceback=traceback.format_exc())
            value = None
        else:
            record["ok"] = True
        record["seconds"] = time.perf_counter() - start
        return value


def run_export(command: list[str], out: Path, record: dict) -> Path:
    record["detail"] = {"command": command}
    done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ZooError(f"exit code {done.returncode}: {lines[-1] if lines else 'no output'}")
    record["detail"]["files"] = {
        str(f.relative_to(out)): f.stat().st_size for f in sorted(out.rglob("*")) if f.is_file()
    }
    return out


def load_onnxruntime_cuda(directory: Path, record: dict):
    import onnxruntime

    from runtime import Engine
    from runtime.onnxruntime_runner import CUDA_PROVIDER, OnnxRuntimeRunner

    if CUDA_PROVIDER not in onnxruntime.get_available_providers():
        raise ZooError(f"ONNX Runtime has no {CUDA_PROVIDER} (install onnxruntime-gpu: pip install 'graph-zoo[gpu]')")
    runner = OnnxRuntimeRunner(directory, provider=CUDA_PROVIDER)
    record["detail"] = {"providers": {phase: s.get_providers() for phase, s in runner.sessions.items()}}
    return Engine.from_runner(runner)


def load_torch(name: str, seed: int, dtype: str, record: dict):
    from runtime import Engine
    from zoo.registry import load_model

    return Engine(load_model(name, dtype=getattr(torch, dtype), seed=seed, device="cuda"), "torch")


def load_tensorrt(directory: Path, record: dict):
    from runtime import Engine

    return Engine.load(directory, backend="tensorrt")


def fixed_prompts(vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    prefixes = []
    for row_a, row_b in zip(a, b, strict=True):
        same = 0
        while same < min(len(row_a), len(row_b)) and row_a[same] == row_b[same]:
            same += 1
        prefixes.append(same)
    return {"identical": a == b, "matching_prefix": prefixes, "new_tokens": NEW_TOKENS}


def time_runner(engine, name: str, vocab: int, seed: int, record: dict) -> list[dict]:
    from benchmarks.harness import Grid, ZooRunner, measure

    runner, generator, timing = ZooRunner(engine, name), torch.Generator().manual_seed(seed), []
    for batch, prompt_len, gen_len in TIMING_POINTS:
        prompts = torch.randint(0, vocab, (batch, prompt_len), generator=generator).tolist()
        grid = Grid((name,), (batch,), (prompt_len,), (gen_len,), warmup=WARMUP, repeats=REPEATS, seed=seed)
        runs = measure(runner, prompts, gen_len, grid, engine.device)
        point = {"batch": batch, "prompt_len": prompt_len, "gen_len": gen_len}
        point |= {m: statistics.median(r.metrics[m] for r in runs) for m in ("ttft_s", "tpot_s")}
        timing.append(point)
    return timing


def check_model(p: ModelPlan, seed: int, dtype: str) -> dict:
    from zoo.registry import get_config

    steps = Steps()
    vocab = get_config(p.name).vocab_size
    trt_dir = steps.run("export-tensorrt", lambda r: run_export(p.commands["export-tensorrt"], p.tensorrt_dir, r))
    onnx_dir = steps.run("export-onnx", lambda r: run_export(p.commands["export-onnx"], p.onnx_dir, r))
    engines = {
        "tensorrt": steps.run("load-tensorrt", lambda r: load_tensorrt(trt_dir, r), needs=(trt_dir,)),
        "onnxruntime-cuda": steps.run(
            "load-onnxruntime-cuda", lambda r: load_onnxruntime_cuda(onnx_dir, r), needs=(onnx_dir,)
        ),
        "torch": steps.run("load-torch", lambda r: load_torch(p.name, seed, dtype, r)),
    }
    prompts = fixed_prompts(vocab, seed)
    runners = {}
    for name, engine in engines.items():
        tokens = steps.run(f"tokens-{name}", lambda r, e=engine: e.generate(prompts, NEW_TOKENS), needs=(engine,))
        timing = steps.run(f"timing-{name}", lambda r, e=engine, n=name: time_runner(e, n, vocab, seed, r), (engine,))
        runners[name] = {"tokens": tokens, "timing": timing or []}
    produced = [name for name in RUNNERS if runners[name]["tokens"] is not None]
    pairs = {f"{a}~{b}": agreement(runners[a]["tokens"], runners[b]["tokens"]) for a, b in combinations(produced, 2)}
    engines.clear()
    torch.cuda.empty_cache()
    return {"family": p.family, "max_seq": p.max_seq, "steps": steps.records, "runners": runners, "agreement": pairs}


def environment() -> dict:
    def version(distribution):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "packages": {name: version(name) for name in PACKAGES},
    }


def summarise(models: dict) -> dict:
    steps = [s for m in models.values() for s in m["steps"]]
    identical: dict[str, list[str]] = {}
    for name, m in models.items():
        for pair, result in m["agreement"].items():
            identical.setdefault(pair, [])
            if result["identical"]:
                identical[pair].append(name)
    return {
        "models": len(models),
        "steps": len(steps),
        "failed_steps": sum(not s["ok"] and not s["skipped"] for s in steps),
        "skipped_steps": sum(s["skipped"] for s in steps),
        "tokens_identical": identical,
    }


def summary_text(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"gpu-check on {report['environment']['gpu'] or 'no GPU'}: {s['models']} models, {s['steps']} steps, "
        f"{s['failed_steps']} failed, {s['skipped_steps']} skipped"
    ]
    for name, m in report["models"].items():
        agree = ", ".join(
            f"{pair} {'identical' if r['identical'] else 'prefix ' + '/'.join(map(str, r['matching_prefix']))}"
            for pair, r in m["agreement"].items()
        )
        lines.append(f"{name}: tokens {agree or 'not compared'}")
        for runner, result in m["runners"].items():
            points = "; ".join(
                f"b{t['batch']} TTFT {t['ttft_s'] * 1e3:.2f} ms TPOT {t['tpot_s'] * 1e3:.3f} ms"
                for t in result["timing"]
            )
            lines.append(f"  {runner}: {points or 'no timing'}")
        lines += [f"  FAILED {st['step']}: {st['error']}" for st in m["steps"] if not st["ok"] and not st["skipped"]]
    return "\n".join(lines)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_check(out: Path, plans: list[ModelPlan], seed: int, dtype: str, max_batch: int) -> dict:
    from benchmarks.harness import write_json_atomically

    out.mkdir(parents=True, exist_ok=True)
    report = {
        "schema_version": 1,
        "started": now(),
        "finished": None,
        "environment": environment(),
        "settings": {
            "dtype": dtype,
            "seed": seed,
            "max_batch": max_batch,
            "prompt_lengths": list(PROMPT_LENGTHS),
            "new_tokens": NEW_TOKENS,
            "timing_points": [{"batch": b, "prompt_len": p, "gen_len": g} for b, p, g in TIMING_POINTS],
            "warmup": WARMUP,
            "repeats": REPEATS,
        },
        "models": {},
    }
    for p in plans:
        print(f"checking {p.name}", file=sys.stderr, flush=True)
        report["models"][p.name] = check_model(p, seed, dtype)
        report["summary"] = summarise(report["models"])
        write_json_atomically(report, out / REPORT_FILE)  # a partial report survives an interrupted run
    report["finished"] = now()
    report["summary"] = summarise(report["models"])
    write_json_atomically(report, out / REPORT_FILE)
    text = summary_text(report)
    (out / SUMMARY_FILE).write_text(text + "\n")
    print(text)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="Directory for the report and the artifacts.")
    parser.add_argument("--models", default=None, help="Comma-separated model names (default: every tiny and small).")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--seed", type=int, default=0, help="Random weights and prompts.")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH)
    parser.add_argument("--dry-run", action="store_true", help="Print the plan and run nothing.")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m] if args.models else default_models()
    try:
        plans = plan(args.out, models, args.seed, args.dtype, args.max_batch)
    except ZooError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.dry_run:
        print(describe_plan(args.out, plans))
        return 0
    if not torch.cuda.is_available():
        raise SystemExit(f"error: {NO_CUDA}")
    report = run_check(args.out, plans, args.seed, args.dtype, args.max_batch)
    return 1 if report["summary"]["failed_steps"] else 0


if __name__ == "__main__":
    sys.exit(main())
