import math

import pytest

from runtime import metrics


def test_metrics_on_synthetic_timestamps():
    # request at t=10; first token after 0.5 s of prefill, then gaps of 0.1, 0.2, 0.1, 0.4
    start, times = 10.0, [10.5, 10.6, 10.8, 10.9, 11.3]
    m = metrics.request_metrics(start, times, batch=2)
    assert m["ttft_s"] == pytest.approx(0.5)
    assert m["tpot_s"] == pytest.approx(0.8 / 4)  # the first token is TTFT's, not TPOT's
    assert metrics.inter_token_latencies(times) == pytest.approx([0.1, 0.2, 0.1, 0.4])
    assert m["itl_p50_s"] == pytest.approx(0.15)
    assert m["itl_p90_s"] == pytest.approx(0.2 + 0.7 * 0.2)  # between the 3rd (0.2) and 4th (0.4) of 4 gaps
    assert m["itl_p99_s"] == pytest.approx(0.2 + 0.97 * 0.2)
    assert m["e2e_s"] == pytest.approx(1.3)
    assert m["output_tokens_per_s"] == pytest.approx(2 * 5 / 1.3)


def test_single_token_has_no_tpot():
    m = metrics.request_metrics(0.0, [0.25], batch=1)
    assert m["ttft_s"] == 0.25 and m["e2e_s"] == 0.25
    assert math.isnan(m["tpot_s"]) and math.isnan(m["itl_p50_s"])


def test_percentile_matches_numpy_linear():
    import numpy as np

    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q in (0, 10, 50, 90, 99, 100):
        assert metrics.percentile(values, q) == pytest.approx(np.percentile(values, q))
