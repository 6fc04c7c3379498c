import json

import jsonschema
import pytest
from click.testing import CliRunner

import zoo
from benchmarks.harness import Grid, run_bench
from benchmarks.schema import REPORT_SCHEMA
from zoo.cli import main
from zoo.errors import MissingDependencyError, ZooError


@pytest.mark.slow
def test_small_grid_writes_valid_json_and_png(tmp_path):
    import matplotlib.image

    out_json, out_png = tmp_path / "report.json", tmp_path / "plot.png"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "llama-tiny",
            "--backend",
            "torch",
            "--batch",
            "1,2",
            "--prompt-len",
            "4,9",
            "--gen-len",
            "3",
            "--warmup",
            "0",
            "--repeats",
            "2",
            "--compare",
            "hf",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    assert len(report["results"]) == 2 * 2 * 2  # 4 grid points, torch and the hf peer
    assert len(report["comparisons"]) == 4
    for r in report["results"]:
        assert len(r["runs"]) == 2
        for run in r["runs"]:
            times = run["token_times_s"]
            assert len(times) == 3 and times == sorted(times) and run["ttft_s"] == pytest.approx(times[0])
        state_tokens = r["batch"] * (r["prompt_len"] + r["gen_len"] - (1 if r["runner"] == "hf" else 0))
        assert r["summary"]["state_bytes"] == state_tokens * zoo.get_config("llama-tiny").cache_bytes_per_token(
            __import__("torch").float32
        )
        assert 0 < r["summary"]["roofline_pct"]
    image = matplotlib.image.imread(out_png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert "roofline %" in result.output and "ratios against hf" in result.output


def test_schema_rejects_a_broken_report(tmp_path):
    report = run_bench("gpt-tiny", Grid(("torch",), (1,), (3,), (2,), warmup=0, repeats=1))
    jsonschema.validate(report, REPORT_SCHEMA)
    del report["results"][0]["summary"]["tpot_s"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, REPORT_SCHEMA)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "tpu"], "unknown backend 'tpu'"),
        (["--backend", "tensorrt"], "tensorrt is not installed"),
        (["--batch", ""], "empty grid: no batches given"),
        (["--prompt-len", "250", "--gen-len", "10"], "exceeds the model's context of 256"),
        (["--batch", "1,x"], "not a comma-separated list of integers"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message):
    result = CliRunner().invoke(main, ["bench", "llama-tiny", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_missing_runtime_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'graph-zoo\[tensorrt\]'"):
        run_bench("llama-tiny", Grid(("tensorrt",), (1,), (4,), (2,)))


def test_compare_needs_hf_weights(tmp_path):
    zoo.save_pretrained(zoo.build("llama-tiny"), tmp_path / "ckpt")
    with pytest.raises(ZooError, match="--compare needs a model name or an HF-format checkpoint"):
        run_bench(str(tmp_path / "ckpt"), Grid(("torch",), (1,), (4,), (2,)), compare="hf")


def test_two_peers_each_get_a_ratio_table():
    report = run_bench("llama-tiny", Grid(("torch",), (1,), (6,), (3,), warmup=0, repeats=1), compare="hf,ort-genai")
    jsonschema.validate(report, REPORT_SCHEMA)
    assert [r["runner"] for r in report["results"]] == ["torch", "hf", "ort-genai"]
    assert [(c["runner"], c["peer"]) for c in report["comparisons"]] == [("torch", "hf"), ("torch", "ort-genai")]
    assert report["grid"]["compare"] == ["hf", "ort-genai"] and report["notes"] == []


def test_ort_genai_on_a_family_its_builder_cannot_convert_is_a_note():
    report = run_bench("mamba2-tiny", Grid(("torch",), (1,), (6,), (3,), warmup=0, repeats=1), compare="hf,ort-genai")
    assert [c["peer"] for c in report["comparisons"]] == ["hf"]
    assert report["notes"] == [
        "ort-genai not run: its model builder does not convert the mamba2 family (supported: llama)"
    ]


def test_unknown_peer():
    result = CliRunner().invoke(main, ["bench", "llama-tiny", "--compare", "hf,vllm"])
    assert result.exit_code == 1 and "unknown peer 'vllm'; known: hf, ort-genai" in result.output


@pytest.mark.slow
def test_model_benched_on_its_exported_onnx_beside_torch():
    grid = Grid(("torch", "onnxruntime", "onnxruntime-unfused"), (2,), (7,), (3,), warmup=0, repeats=1)
    report = run_bench("llama-tiny", grid)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert [r["runner"] for r in report["results"]] == ["torch", "onnxruntime", "onnxruntime-unfused"]
    assert all(len(run["token_times_s"]) == 3 for r in report["results"] for run in r["runs"])


@pytest.mark.parametrize("name", ["t5-tiny", "hourglass-tiny", "dynpool-tiny"])
def test_seed_families_bench(name, tmp_path):
    """`zoo bench` on the encoder-decoder and the shortening families: a valid report, every new token
    timed; t5 against its HF twin (Seq2SeqLM generate)."""
    out_json = tmp_path / "report.json"
    args = ["bench", name, "--batch", "2", "--prompt-len", "7", "--gen-len", "3", "--warmup", "0", "--repeats", "1"]
    compare = ["--compare", "hf"] if name == "t5-tiny" else []
    result = CliRunner().invoke(main, [*args, *compare, "--json", str(out_json)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    assert {r["runner"] for r in report["results"]} == ({"torch", "hf"} if compare else {"torch"})
    for r in report["results"]:
        assert [len(run["token_times_s"]) for run in r["runs"]] == [3]
