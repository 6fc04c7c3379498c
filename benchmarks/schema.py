"""JSON Schema of the `zoo bench --json` report (README "zoo bench" documents the fields)."""

_NUMBER = {"type": "number"}
_SECONDS = {"type": "number", "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}

_METRICS = {
    "ttft_s": _SECONDS,
    "tpot_s": _SECONDS,
    "itl_p50_s": _SECONDS,
    "itl_p90_s": _SECONDS,
    "itl_p99_s": _SECONDS,
    "e2e_s": _SECONDS,
    "output_tokens_per_s": _SECONDS,
}

_RUN = {
    "type": "object",
    "required": ["token_times_s", "state_bytes", "peak_memory_bytes", "peak_memory_delta_bytes", *_METRICS],
    "properties": {
        "token_times_s": {"type": "array", "items": _SECONDS, "minItems": 1},
        "state_bytes": _COUNT,
        "peak_memory_bytes": _COUNT,
        "peak_memory_delta_bytes": {"type": "integer"},
        **_METRICS,
    },
}

_SUMMARY = {
    "type": "object",
    "required": [
        *_METRICS,
        "state_bytes",
        "peak_memory_bytes",
        "peak_memory_delta_bytes",
        "roofline_lower_bound_s",
        "roofline_pct",
        "reference_s",
    ],
    "properties": {
        **_METRICS,
        "state_bytes": _COUNT,
        "peak_memory_bytes": _COUNT,
        "peak_memory_delta_bytes": {"type": "integer"},
        "roofline_lower_bound_s": {"type": "number", "exclusiveMinimum": 0},
        "roofline_pct": {"type": "number", "exclusiveMinimum": 0},
        "reference_s": {"type": "object", "required": ["ttft_s", "tpot_s", "e2e_s"], "additionalProperties": _SECONDS},
    },
}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "zoo bench report",
    "type": "object",
    "required": ["schema_version", "target", "grid", "model", "environment", "machine", "results", "comparisons"],
    "properties": {
        "schema_version": {"const": 1},
        "target": {"type": "string"},
        "grid": {
            "type": "object",
            "required": [
                "backends",
                "batches",
                "prompt_lens",
                "gen_lens",
                "dtype",
                "warmup",
                "repeats",
                "seed",
                "compare",
            ],
            "properties": {
                "backends": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "batches": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                "prompt_lens": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                "gen_lens": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                "dtype": {"type": "string"},
                "warmup": _COUNT,
                "repeats": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer"},
                "compare": {"type": ["array", "null"], "items": {"type": "string"}},
            },
        },
        "model": {
            "type": "object",
            "required": ["family", "params", "config"],
            "properties": {"family": {"type": "string"}, "params": _COUNT, "config": {"type": "object"}},
        },
        "environment": {"type": "object", "required": ["cpu", "cpu_count", "python", "torch", "gpu"]},
        "machine": {
            "type": "object",
            "required": [
                "read_bandwidth_bytes_per_s",
                "copy_bandwidth_bytes_per_s",
                "matmul_flops_per_s",
                "calibration_s",
                "calibration_runs_s",
                "calibration_spread",
                "reference_calibration_s",
                "reference_machine",
            ],
            "properties": {
                "read_bandwidth_bytes_per_s": {"type": "number", "exclusiveMinimum": 0},
                "copy_bandwidth_bytes_per_s": {"type": "number", "exclusiveMinimum": 0},
                "matmul_flops_per_s": {"type": "number", "exclusiveMinimum": 0},
                "calibration_s": {"type": "number", "exclusiveMinimum": 0},
                "calibration_runs_s": {
                    "type": "array",
                    "minItems": 3,
                    "items": {"type": "number", "exclusiveMinimum": 0},
                },
                "calibration_spread": {"type": "number", "minimum": 0},
                "reference_calibration_s": {"type": "number", "exclusiveMinimum": 0},
                "reference_machine": {"type": "string"},
            },
        },
        "results": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["runner", "batch", "prompt_len", "gen_len", "summary", "runs"],
                "properties": {
                    "runner": {"type": "string"},
                    "batch": {"type": "integer", "minimum": 1},
                    "prompt_len": {"type": "integer", "minimum": 1},
                    "gen_len": {"type": "integer", "minimum": 1},
                    "summary": _SUMMARY,
                    "runs": {"type": "array", "items": _RUN, "minItems": 1},
                },
            },
        },
        "comparisons": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["runner", "peer", "batch", "prompt_len", "gen_len", "ratios"],
                "properties": {"ratios": {"type": "object", "additionalProperties": {"type": ["number", "null"]}}},
            },
        },
    },
}
