"""What the machine can do, measured once per benchmark run: memory bandwidth, matmul throughput, the
reference-system-time calibration; plus the environment description and peak-memory tracking."""

import os
import platform
import statistics
import threading
import time

import torch

# Reference system time (after Kaddour et al. 2023, "No Train No Gain", which maps compute time on any
# machine to a reference machine). Calibration: `calibrate()` times a fixed workload (greedy decode of a
# fixed, seeded 4-layer Llama, batch 1, prompt 32, 64 new tokens, eager backend, fp32; median of 9 after 3
# warm-up runs), which mixes the per-op overhead and memory streaming that decode latency is made of.
# A figure t measured here is reported as t * REFERENCE_CALIBRATION_S / calibration in
# reference-machine seconds. The reference machine is this project's CI machine kind: 2 cores of an AMD
# EPYC (AVX-512), 24 GiB, torch 2.13.0+cpu; measured there on 2026-11-22 (median of 5 calibrations).
REFERENCE_CALIBRATION_S = 0.128
REFERENCE_MACHINE = "2-core AMD EPYC (AVX-512) CPU, torch 2.13.0+cpu, 2026-11-22"


def call_times(fn, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn() after `warmup` unmeasured calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls of fn() after `warmup` unmeasured calls."""
    return statistics.median(call_times(fn, repeats, warmup))


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device="cpu", megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large device copy, counting the bytes read and the bytes written."""
    device = torch.device(device)
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        _sync(device)

    return 2 * src.nbytes / median_time(copy, repeats)


def measure_read_bandwidth(device="cpu", megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second read by a reduction over a large tensor: the access pattern of a decode step,
    which streams weights and cache and writes little. The roofline bound uses this figure."""
    device = torch.device(device)
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)

    def read():
        src.sum()
        _sync(device)

    return src.nbytes / median_time(read, repeats)


def measure_matmul_flops(device="cpu", dtype=torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """Floating-point operations per second of a square matmul (2 * size^3 per product)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def matmul():
        a @ b
        _sync(device)

    return 2 * size**3 / median_time(matmul, repeats)


def calibrate(repeats: int = 9, warmup: int = 3) -> dict:
    """The reference-system-time calibration (see REFERENCE_CALIBRATION_S): the workload's median seconds,
    every measured run, and the spread (interquartile range over the median; 0 for a quiet machine).
    Warm-up runs take the one-off costs (allocator growth, first-call dispatch) out of the figure."""
    runs = calibration_runs(repeats, warmup)
    quartiles = statistics.quantiles(runs, n=4)
    median = statistics.median(runs)
    return {
        "calibration_s": median,
        "calibration_runs_s": runs,
        "calibration_spread": (quartiles[2] - quartiles[0]) / median,
    }


def calibration_runs(repeats: int, warmup: int) -> list[float]:
    """Seconds of each run of the fixed reference-system-time workload."""
    from runtime import Engine
    from zoo.models.llama import LlamaConfig
    from zoo.registry import build_from_config

    config = LlamaConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=704, max_seq_len=128)
    engine = Engine.from_model(build_from_config(config, seed=0), "torch", weight_layout="row-major")
    prompt = [list(range(1, 33))]
    with torch.random.fork_rng(devices=[]):
        return call_times(lambda: engine.generate(prompt, 64), repeats, warmup)


def to_reference_seconds(seconds: float, calibration_s: float) -> float:
    return seconds * REFERENCE_CALIBRATION_S / calibration_s


def environment(device="cpu") -> dict:
    """Machine and software description for the JSON report."""
    import click

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "click": click.__version__,
        "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None,
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    return env


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; elsewhere the lifetime peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory over a `with` block: the CUDA allocator's peak on a GPU, else the process RSS sampled
    every `interval_s` by a background thread (which reads a /proc file and sleeps, so it barely
    competes with the measured work).

    peak_bytes is the absolute peak (on CPU: everything the process holds, every model in it included);
    peak_delta_bytes is the peak minus the usage at entry, what the block itself added. On CPU the delta
    undercounts memory that the allocator reuses from an earlier block (warm-up runs make later runs
    reuse their buffers), so compare deltas of runs that had the same warm-up."""

    def __init__(self, device="cpu", interval_s: float = 0.002):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_bytes = self.baseline_bytes = 0

    @property
    def peak_delta_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self.peak_bytes = self.baseline_bytes = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
        return False
