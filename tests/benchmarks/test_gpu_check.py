"""`python -m benchmarks.gpu_check`: the plan and --dry-run, the one-line refusal without CUDA, and a run of
the check's steps on CPU stand-ins (the torch engine in place of TensorRT, a failing ONNX Runtime) that
writes the documented report, with the failure recorded and the run carried on."""

import json

import pytest
import torch

import zoo
from benchmarks import gpu_check
from runtime import Engine
from zoo.errors import ZooError


def test_default_models_are_every_tiny_and_small():
    assert gpu_check.default_models() == [
        "llama-tiny",
        "llama-small",
        "gpt-tiny",
        "dmc-tiny",
        "moe-tiny",
        "mamba2-tiny",
        "mamba2-small",
        "mamba2-hybrid-tiny",
        "mamba2-hybrid-small",
        "t5-tiny",
        "hourglass-tiny",
        "hourglass-small",
        "dynpool-tiny",
        "dynpool-small",
    ]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a dry run needs no GPU
    out = tmp_path / "check"
    assert gpu_check.main(["--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    for name in gpu_check.default_models():
        assert f"-m zoo.cli export {name} --format tensorrt -o {out}/artifacts/{name}/tensorrt" in text
        assert f"export {name} --format onnx -o {out}/artifacts/{name}/onnx" in text
    assert "--format tensorrt -o" in text and "--max-batch 8 --max-seq 256" in text
    assert "gpt-tiny (gpt, max seq 128)" in text  # clipped to the model's context
    assert "tiny size only (no small size, or not asked for): gpt, dmc, moe" in text
    assert f"writes: {out / 'gpu_check.json'}, {out / 'gpu_check.txt'}" in text


def test_refuses_without_cuda_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--out", str(tmp_path / "check"), "--models", "llama-tiny"])
    assert str(exit_.value) == f"error: {gpu_check.NO_CUDA}" and "\n" not in str(exit_.value)
    assert not (tmp_path / "check").exists()


def test_bad_models_and_batch_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="error: unknown model 'llama-huge'"):
        gpu_check.main(["--out", str(tmp_path), "--models", "llama-huge", "--dry-run"])
    with pytest.raises(SystemExit, match="error: --max-batch 2 is below the check's largest batch, 8"):
        gpu_check.main(["--out", str(tmp_path), "--max-batch", "2", "--dry-run"])


def test_agreement_counts_the_matching_prefix():
    same = gpu_check.agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]])
    assert same == {"identical": True, "matching_prefix": [3, 2], "new_tokens": gpu_check.NEW_TOKENS}
    differ = gpu_check.agreement([[1, 2, 3], [4, 5]], [[1, 9, 3], [7, 5]])
    assert differ["identical"] is False and differ["matching_prefix"] == [1, 0]


def test_check_records_failures_and_carries_on(tmp_path, monkeypatch, capsys):
    """TensorRT's engine is the torch engine on CPU, ONNX Runtime fails to load: the report holds the
    failure, the skipped steps after it, the tokens and timings of the others and their agreement."""
    exported = []

    def fake_export(command, out, record):
        exported.append(command)
        record["detail"] = {"command": command}
        return out

    def failing_onnxruntime(directory, record):
        raise ZooError("ONNX Runtime has no CUDAExecutionProvider")

    model = zoo.build("llama-tiny", seed=1)
    monkeypatch.setattr(gpu_check, "run_export", fake_export)
    monkeypatch.setattr(gpu_check, "load_tensorrt", lambda directory, record: Engine(model, "torch"))
    monkeypatch.setattr(gpu_check, "load_onnxruntime_cuda", failing_onnxruntime)
    monkeypatch.setattr(gpu_check, "load_torch", lambda name, seed, dtype, record: Engine(model, "torch"))
    monkeypatch.setattr(gpu_check, "TIMING_POINTS", ((1, 8, 3), (2, 5, 2)))
    monkeypatch.setattr(gpu_check, "REPEATS", 2)
    out = tmp_path / "check"
    plans = gpu_check.plan(out, ["llama-tiny"])
    report = gpu_check.run_check(out, plans, seed=0, dtype="float32", max_batch=8)

    assert [c[6] for c in exported] == ["tensorrt", "onnx"]
    assert json.loads((out / "gpu_check.json").read_text()) == report
    assert set(report) == {"schema_version", "started", "finished", "environment", "settings", "models", "summary"}
    checked = report["models"]["llama-tiny"]
    steps = {s["step"]: s for s in checked["steps"]}
    assert steps["load-onnxruntime-cuda"]["error"] == "ZooError: ONNX Runtime has no CUDAExecutionProvider"
    assert "Traceback" in steps["load-onnxruntime-cuda"]["traceback"]
    assert steps["tokens-onnxruntime-cuda"]["skipped"] and steps["timing-onnxruntime-cuda"]["skipped"]
    assert all(steps[f"{kind}-{runner}"]["ok"] for kind in ("tokens", "timing") for runner in ("tensorrt", "torch"))
    tokens = checked["runners"]["tensorrt"]["tokens"]
    assert [len(row) for row in tokens] == [gpu_check.NEW_TOKENS] * len(gpu_check.PROMPT_LENGTHS)
    assert checked["agreement"] == {
        "tensorrt~torch": {"identical": True, "matching_prefix": [gpu_check.NEW_TOKENS] * 3, "new_tokens": 16}
    }
    timing = checked["runners"]["torch"]["timing"]
    assert [(t["batch"], t["prompt_len"], t["gen_len"]) for t in timing] == [(1, 8, 3), (2, 5, 2)]
    assert all(t["ttft_s"] > 0 and t["tpot_s"] > 0 for t in timing)
    assert report["summary"] == {
        "models": 1,
        "steps": 11,  # 2 exports, then per runner: load, tokens, timing
        "failed_steps": 1,
        "skipped_steps": 2,
        "tokens_identical": {"tensorrt~torch": ["llama-tiny"]},
    }
    summary = (out / "gpu_check.txt").read_text()
    assert "llama-tiny: tokens tensorrt~torch identical" in summary
    assert "FAILED load-onnxruntime-cuda: ZooError: ONNX Runtime has no CUDAExecutionProvider" in summary
    assert summary.strip() in capsys.readouterr().out
