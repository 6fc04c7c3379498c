"""`zoo bench`: a latency grid over backends, batch sizes, prompt and generation lengths, with a roofline
bound per configuration, reference-system-time figures and, optionally, HF transformers as a peer on
the same weights. Metrics are defined in runtime/metrics.py; the JSON report follows REPORT_SCHEMA.

The target is a model name or checkpoint directory (backends torch, compiled), or an exported artifact
directory (backend onnxruntime). An artifact holds ONNX graphs with its weights folded into them, not torch
weights, so it is benched on onnxruntime only; the report's "notes" say so when other backends were asked
for. Bench the model it was exported from for torch / compiled beside it.
"""

import contextlib
import dataclasses
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import machine
from benchmarks.roofline import decode_step_cost
from runtime import metrics
from zoo.errors import ZooError

PEERS = ("hf", "ort-genai")  # HF transformers' generate; onnxruntime-genai (benchmarks/ort_genai.py)
SUMMARY_METRICS = ("ttft_s", "tpot_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "e2e_s", "output_tokens_per_s")
REFERENCE_METRICS = ("ttft_s", "tpot_s", "e2e_s")  # latencies also reported in reference-machine seconds


@dataclass(frozen=True)
class Grid:
    backends: tuple[str, ...]
    batches: tuple[int, ...]
    prompt_lens: tuple[int, ...]
    gen_lens: tuple[int, ...]
    dtype: str = "float32"
    warmup: int = 1
    repeats: int = 3
    seed: int = 0

    def validate(self, context: int) -> None:
        for name in ("backends", "batches", "prompt_lens", "gen_lens"):
            if not getattr(self, name):
                raise ZooError(f"empty grid: no {name.replace('_', ' ')} given")
        for name in ("batches", "prompt_lens", "gen_lens"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise ZooError(f"{name.replace('_', ' ')} must be >= 1, got {bad}")
        if self.repeats < 1 or self.warmup < 0:
            raise ZooError(f"need repeats >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        longest = max(self.prompt_lens) + max(self.gen_lens)
        if longest > context:
            raise ZooError(
                f"prompt length {max(self.prompt_lens)} + generation length {max(self.gen_lens)} exceeds the "
                f"model's context of {context}"
            )

    def points(self):
        return list(itertools.product(self.batches, self.prompt_lens, self.gen_lens))


@dataclass
class Run:
    """One measured request: timestamps relative to its start, and its memory."""

    token_times_s: list[float]
    state_bytes: int
    peak_memory_bytes: int
    peak_memory_delta_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)


class ZooRunner:
    """A zoo Engine (any backend) timed through generate_with_stats."""

    def __init__(self, engine, name: str | None = None):
        self.name = name or engine.backend
        self.engine = engine

    def warmup(self, prompts, gen_len):
        self.engine.warmup(prompts, gen_len)

    def __call__(self, prompts, gen_len):
        result = self.engine.generate_with_stats(prompts, gen_len)
        return result.start_time, result.token_times, result.state_bytes


class TimestampStreamer:
    """An HF streamer that records when each step's tokens arrive (the first put() is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


class HFRunner:
    """HF transformers' generate, greedy, with its default dynamic cache; all prompts of one length."""

    name = "hf"

    def __init__(self, hf_model, config):
        self.model, self.config = hf_model, config

    def warmup(self, prompts, gen_len):
        self(prompts, gen_len)

    def __call__(self, prompts, gen_len):
        input_ids = torch.tensor(prompts, device=self.model.device)
        streamer = TimestampStreamer()
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=gen_len,
                min_new_tokens=gen_len,
                do_sample=False,
                streamer=streamer,
            )
        # HF's cache ends holding prompt + generated tokens (the last token is sampled, not cached)
        cached = len(prompts) * (len(prompts[0]) + gen_len - 1)
        return start, streamer.times[1:], cached * self.config.cache_bytes_per_token(self.model.dtype)


def peers_of(compare) -> tuple[str, ...]:
    """The peers a --compare value names ("hf", "hf,ort-genai", a tuple, or None), each checked."""
    if compare is None:
        return ()
    names = tuple(dict.fromkeys(compare.split(",") if isinstance(compare, str) else compare))
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise ZooError(f"unknown peer {unknown[0]!r}; known: {', '.join(PEERS)}")
    return names


def load_target(target: str, dtype: torch.dtype, seed: int, compare):
    """(zoo model, HF peer model or None). With peers, both hold the same weights: a named model gets
    random HF weights that the zoo loads through its converter; an HF directory is loaded by both (every
    peer starts from those HF weights)."""
    from zoo.registry import build_hf_twin, from_pretrained, get_config, is_checkpoint_dir, load_model

    if not peers_of(compare):
        return load_model(target, dtype=dtype, seed=seed), None
    from zoo.errors import require

    transformers = require("transformers", "hf")
    if is_checkpoint_dir(target):
        if "zoo_family" in json.loads((Path(target) / "config.json").read_text()):
            raise ZooError("--compare needs a model name or an HF-format checkpoint directory (the peers' weights)")
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(target, dtype=dtype).eval()
        return from_pretrained(target, dtype=dtype), hf_model
    hf_model = build_hf_twin(get_config(target), seed).to(dtype)
    with tempfile.TemporaryDirectory() as tmp, quiet_hf_progress(transformers):
        hf_model.save_pretrained(tmp)
        return from_pretrained(tmp, dtype=dtype), hf_model


@contextlib.contextmanager
def quiet_hf_progress(transformers):
    """No HF progress bars (e.g. "Writing model shards") in the benchmark's output."""
    was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers.utils.logging.enable_progress_bar()


def measure(runner, prompts, gen_len, grid: Grid, device) -> list[Run]:
    for _ in range(grid.warmup):
        runner.warmup(prompts, gen_len)
    runs = []
    for _ in range(grid.repeats):
        with machine.PeakMemory(device) as peak:
            start, token_times, state_bytes = runner(prompts, gen_len)
        run = Run([t - start for t in token_times], int(state_bytes), int(peak.peak_bytes), int(peak.peak_delta_bytes))
        run.metrics = metrics.request_metrics(0.0, run.token_times_s, len(prompts))
        runs.append(run)
    return runs


def summarise(runs: list[Run], config, batch, prompt_len, gen_len, dtype, machine_figures) -> dict:
    summary = {name: statistics.median(r.metrics[name] for r in runs) for name in SUMMARY_METRICS}
    summary["state_bytes"] = max(r.state_bytes for r in runs)
    summary["peak_memory_bytes"] = max(r.peak_memory_bytes for r in runs)
    summary["peak_memory_delta_bytes"] = max(r.peak_memory_delta_bytes for r in runs)
    cost = decode_step_cost(config, batch, prompt_len + gen_len / 2, dtype)
    bound = cost.lower_bound_s(machine_figures["read_bandwidth_bytes_per_s"], machine_figures["matmul_flops_per_s"])
    summary["roofline_lower_bound_s"] = bound
    summary["roofline_pct"] = 100 * bound / summary["tpot_s"]
    summary["reference_s"] = {
        name: machine.to_reference_seconds(summary[name], machine_figures["calibration_s"])
        for name in REFERENCE_METRICS
    }
    return summary


ARTIFACT_BACKEND = "onnxruntime"
# For a model target, the bench exports the model first (fused or unfused ONNX, into a temporary artifact)
# and runs the artifact on ONNX Runtime, beside the torch backends on the very same weights.
EXPORTED_BACKENDS = {"onnxruntime": True, "onnxruntime-unfused": False}


def model_engines(model, backends, temporary: contextlib.ExitStack, status) -> list:
    """One (engine, runner name) per backend: torch / compiled on the model, onnxruntime[-unfused] on an
    artifact exported from it into a temporary directory that lives as long as `temporary`."""
    from runtime import Engine

    engines = []
    for backend in backends:
        if backend in EXPORTED_BACKENDS:
            from export.onnx import export_onnx

            status(f"exporting the model ({backend})")
            directory = Path(temporary.enter_context(tempfile.TemporaryDirectory())) / "artifact"
            export_onnx(model, directory, fused=EXPORTED_BACKENDS[backend])
            engines.append((Engine.load_artifact(directory), backend))
        else:
            engines.append((Engine.from_model(model, backend), backend))
    return engines


def artifact_engines(target: str, grid: Grid, compare: str | None) -> tuple[list, list[str]]:
    """([the onnxruntime engine of the artifact at `target`], notes on what the grid asked for but an
    artifact cannot run)."""
    from runtime import Engine

    if compare is not None:
        raise ZooError(f"--compare {compare} needs the model's weights; {target} is an exported artifact (ONNX graphs)")
    notes = []
    skipped = [b for b in grid.backends if b != ARTIFACT_BACKEND]
    if skipped:
        notes.append(
            f"{target} is an exported artifact: benched on {ARTIFACT_BACKEND} only, not on {', '.join(skipped)} "
            "(those need torch weights, which the artifact does not hold: bench the model it was exported from)"
        )
    engine = Engine.load_artifact(target)
    if str(engine.runner.dtype).removeprefix("torch.") != grid.dtype:
        dtype = engine.runner.manifest["dtype"]
        raise ZooError(f"{target} holds {dtype} graphs; bench it with --dtype {dtype} (or export it in {grid.dtype})")
    return [engine], notes


def run_bench(target: str, grid: Grid, compare: str | None = None, device="cpu", progress=None, status=None) -> dict:
    """Run the grid and return the report (REPORT_SCHEMA). `progress(advance)` is called after each point,
    `status(text)` before each phase (loading, exporting, machine measurements, calibration)."""
    with contextlib.ExitStack() as temporary:  # artifacts exported for the onnxruntime backends of a model
        return _run_bench(target, grid, compare, device, progress, status or (lambda text: None), temporary)


def _run_bench(target, grid, compare, device, progress, status, temporary: contextlib.ExitStack) -> dict:
    from runtime.engine import check_backend, is_artifact_dir

    dtype = getattr(torch, grid.dtype)
    status(f"loading {target}")
    hf_model, notes = None, []
    if is_artifact_dir(target):
        engines, notes = artifact_engines(target, grid, compare)
        engines = [(engine, ARTIFACT_BACKEND) for engine in engines]
        grid = dataclasses.replace(grid, backends=(ARTIFACT_BACKEND,))
        config = engines[0][0].config
    else:
        for backend in grid.backends:
            check_backend("onnxruntime" if backend in EXPORTED_BACKENDS else backend, allow_artifacts=True)
        model, hf_model = load_target(target, dtype, grid.seed, compare)
        config = model.config
        engines = model_engines(model, grid.backends, temporary, status)
    grid.validate(config.max_seq_len)
    status("measuring memory bandwidth and matmul throughput")
    machine_figures = {
        "read_bandwidth_bytes_per_s": machine.measure_read_bandwidth(device),
        "copy_bandwidth_bytes_per_s": machine.measure_bandwidth(device),
        "matmul_flops_per_s": machine.measure_matmul_flops(device, dtype),
    }
    status("calibrating the reference system time")
    machine_figures |= machine.calibrate()
    machine_figures["reference_calibration_s"] = machine.REFERENCE_CALIBRATION_S
    machine_figures["reference_machine"] = machine.REFERENCE_MACHINE
    status("benchmarking")
    runners = [ZooRunner(engine, name) for engine, name in engines]
    peers = peers_of(compare)
    if "hf" in peers:
        runners.append(HFRunner(hf_model, config))
    if "ort-genai" in peers:
        from benchmarks.ort_genai import SUPPORTED_FAMILIES, OrtGenAIRunner

        if config.family in SUPPORTED_FAMILIES:
            status("building the onnxruntime-genai model")
            runners.append(OrtGenAIRunner.from_hf_model(hf_model, config))
        else:
            peers = tuple(p for p in peers if p != "ort-genai")
            notes.append(
                f"ort-genai not run: its model builder does not convert the {config.family} family "
                f"(supported: {', '.join(SUPPORTED_FAMILIES)})"
            )
    generator = torch.Generator().manual_seed(grid.seed)
    results = []
    for batch, prompt_len, gen_len in grid.points():
        prompts = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=generator).tolist()
        for runner in runners:
            runs = measure(runner, prompts, gen_len, grid, device)
            results.append(
                {
                    "runner": runner.name,
                    "batch": batch,
                    "prompt_len": prompt_len,
                    "gen_len": gen_len,
                    "summary": summarise(runs, config, batch, prompt_len, gen_len, dtype, machine_figures),
                    "runs": [
                        {
                            "token_times_s": r.token_times_s,
                            "state_bytes": r.state_bytes,
                            "peak_memory_bytes": r.peak_memory_bytes,
                            "peak_memory_delta_bytes": r.peak_memory_delta_bytes,
                            **r.metrics,
                        }
                        for r in runs
                    ],
                }
            )
            if progress:
                progress(1)
    return {
        "schema_version": 1,
        "target": target,
        "grid": {
            "backends": list(grid.backends),
            "batches": list(grid.batches),
            "prompt_lens": list(grid.prompt_lens),
            "gen_lens": list(grid.gen_lens),
            "dtype": grid.dtype,
            "warmup": grid.warmup,
            "repeats": grid.repeats,
            "seed": grid.seed,
            "compare": list(peers_of(compare)) or None,
        },
        "model": {"family": config.family, "params": config.num_params(), "config": config.to_dict()},
        "environment": machine.environment(device),
        "machine": machine_figures,
        "results": results,
        "comparisons": [row for peer in peers for row in compare_to_peer(results, peer)],
        "notes": notes,
    }


MEMORY_RATIO_FLOOR_BYTES = 2**20  # a peer's request that raised RSS by less than this gives no memory ratio


def compare_to_peer(results: list[dict], peer: str) -> list[dict]:
    """Every summary metric of every zoo runner divided by the peer's at the same grid point (None where
    the peer's figure is 0, or its RSS rise is below MEMORY_RATIO_FLOOR_BYTES and so page-level noise)."""

    def key(r):
        return r["batch"], r["prompt_len"], r["gen_len"]

    peers = {key(r): r["summary"] for r in results if r["runner"] == peer}
    comparisons = []
    for r in results:
        if r["runner"] in PEERS:
            continue
        ours, theirs = r["summary"], peers[key(r)]
        ratios = {m: ours[m] / theirs[m] if theirs[m] else None for m in (*SUMMARY_METRICS, "state_bytes")}
        delta = "peak_memory_delta_bytes"
        ratios[delta] = ours[delta] / theirs[delta] if theirs[delta] >= MEMORY_RATIO_FLOOR_BYTES else None
        comparisons.append(
            {
                "runner": r["runner"],
                "peer": peer,
                "batch": r["batch"],
                "prompt_len": r["prompt_len"],
                "gen_len": r["gen_len"],
                "ratios": ratios,
            }
        )
    return comparisons


def is_bench_report(path: Path) -> bool:
    """Whether `path` holds a JSON report this benchmark wrote (so a new run may replace it)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(report, dict) and {"schema_version", "grid", "results"} <= set(report)


PLOT_MARK = b"zoo bench plot"  # in the PNG's Description text chunk


def is_bench_plot(path: Path) -> bool:
    """Whether `path` is a PNG this benchmark drew."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and PLOT_MARK in head


def check_outputs(json_path: str | None, plot_path: str | None) -> None:
    """Fail before benchmarking when a --json / --plot destination cannot be written."""
    from zoo.checkpoint import check_output_file

    if json_path:
        check_output_file(json_path, is_bench_report, "zoo bench JSON report")
    if plot_path:
        check_output_file(plot_path, is_bench_plot, "zoo bench plot")


def write_json_atomically(report: dict, path: str | os.PathLike) -> Path:
    from zoo.checkpoint import write_file_atomically

    return write_file_atomically(path, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Left: TPOT against prompt (context) length, one line per runner and batch size. Right: TPOT of
    every runner at every grid point, as grouped bars (the peer beside the zoo's backends)."""
    from zoo.errors import require

    matplotlib = require("matplotlib", "bench")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    runners = list(dict.fromkeys(r["runner"] for r in results))
    colour = {runner: plt.get_cmap("tab10")(i % 10) for i, runner in enumerate(runners)}  # same in both panels
    line_styles = ("-", "--", ":", "-.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    curves = sorted({(r["batch"], r["gen_len"]) for r in results})
    for runner, batch, gen_len in sorted({(r["runner"], r["batch"], r["gen_len"]) for r in results}):
        points = sorted(
            (r["prompt_len"], r["summary"]["tpot_s"] * 1e3)
            for r in results
            if (r["runner"], r["batch"], r["gen_len"]) == (runner, batch, gen_len)
        )
        style = line_styles[curves.index((batch, gen_len)) % len(line_styles)]
        left.plot(
            *zip(*points), style, marker="o", color=colour[runner], label=f"{runner}, batch {batch}, gen {gen_len}"
        )
    left.set(xlabel="prompt length (tokens)", ylabel="TPOT (ms)", title="TPOT against context length")
    left.legend(fontsize=7)
    groups = sorted({(r["batch"], r["prompt_len"], r["gen_len"]) for r in results})
    width = 0.8 / len(runners)
    for i, runner in enumerate(runners):
        values = {
            (r["batch"], r["prompt_len"], r["gen_len"]): r["summary"]["tpot_s"] * 1e3
            for r in results
            if r["runner"] == runner
        }
        right.bar(
            [g + i * width for g in range(len(groups))],
            [values.get(g, 0) for g in groups],
            width,
            label=runner,
            color=colour[runner],
        )
    right.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    right.set_xticklabels([f"b{b} p{p} g{n}" for b, p, n in groups], rotation=30, fontsize=7)
    right.set(ylabel="TPOT (ms)", title="TPOT by runner")
    right.legend(fontsize=7)
    fig.suptitle(f"zoo bench {report['target']} ({report['environment']['cpu']})")
    fig.tight_layout()
    from zoo.checkpoint import write_file_atomically

    try:
        return write_file_atomically(
            path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", metadata={"Description": PLOT_MARK.decode()})
        )
    finally:
        plt.close(fig)
