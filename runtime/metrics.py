"""Latency metrics of one generation request, defined once here for the engine and `zoo bench` (the
README's "zoo bench" section repeats the definitions).

Inputs are times in seconds from one clock: `start` (the request is submitted: before tokenised prompts
enter prefill) and `token_times[i]` (the moment the i-th new token of every row is available on the
host). With a batch, one step yields one token per row; metrics are per step, tokens/s counts all rows.
"""

import math


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ttft(start: float, token_times: list[float]) -> float:
    """Time to first token: first token available - request start (prefill + first sampling)."""
    return token_times[0] - start


def inter_token_latencies(token_times: list[float]) -> list[float]:
    """ITL: gaps between consecutive tokens, token_times[i] - token_times[i-1] for i >= 1. The first
    token is excluded (it is TTFT's)."""
    return [b - a for a, b in zip(token_times, token_times[1:])]


def tpot(token_times: list[float]) -> float:
    """Time per output token: mean ITL = (last - first) / (n - 1); NaN with a single token."""
    n = len(token_times)
    return (token_times[-1] - token_times[0]) / (n - 1) if n > 1 else math.nan


def end_to_end(start: float, token_times: list[float]) -> float:
    """End-to-end latency: last token available - request start."""
    return token_times[-1] - start


def request_metrics(start: float, token_times: list[float], batch: int) -> dict[str, float]:
    """All per-request metrics. output_tokens_per_s = batch * tokens / end-to-end latency."""
    itl = inter_token_latencies(token_times)
    e2e = end_to_end(start, token_times)
    return {
        "ttft_s": ttft(start, token_times),
        "tpot_s": tpot(token_times),
        "itl_p50_s": percentile(itl, 50),
        "itl_p90_s": percentile(itl, 90),
        "itl_p99_s": percentile(itl, 99),
        "e2e_s": e2e,
        "output_tokens_per_s": batch * len(token_times) / e2e,
    }
