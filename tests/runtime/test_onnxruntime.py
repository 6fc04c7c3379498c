"""Exported artifacts on the ONNX Runtime runner: `Engine.load(DIR)` and `zoo run DIR --json` give the torch
engine's greedy tokens for every family's tiny model, fused and unfused, at prompt lengths 1, 37 and 300
(or the longest the context holds) and a mixed batch; DMC's compressed cache grows during decode; the state
buffers are reused across steps (IO binding); each load error is one line; sampling options apply.
Each (family, fused) is exported once per module (the slow part: tens of seconds per artifact)."""

import json
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner

import zoo
from runtime import Engine, engine
from tests.conftest import informative_weights
from zoo.cli import main
from zoo.errors import MissingDependencyError, ZooError

FAMILIES = ["llama-tiny", "gpt-tiny", "dmc-tiny", "mamba2-tiny", "mamba2-hybrid-tiny", "moe-tiny"]
FAST = {("llama-tiny", True), ("llama-tiny", False), ("dmc-tiny", True), ("mamba2-tiny", True)}
CASES = [
    pytest.param(
        (name, fused),
        id=f"{name}-{'fused' if fused else 'unfused'}",
        marks=() if (name, fused) in FAST else pytest.mark.slow,
    )
    for name in FAMILIES
    for fused in (True, False)
]
NEW_TOKENS = 6


def tiny_model(name: str) -> torch.nn.Module:
    model = informative_weights(zoo.build(name), seed=1)
    if name == "dmc-tiny":  # decisions that merge about half the tokens: the compressed cache is ragged
        with torch.no_grad():
            for layer in model.layers:
                layer.attn.wk.weight[layer.attn.head_dim - 1 :: layer.attn.head_dim] *= 40
    return model.eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Factory: (model, artifact directory) for (name, fused), exported once per module."""
    from export.onnx import export_onnx

    cache = {}

    def get(name: str, fused: bool):
        if (name, fused) not in cache:
            model = tiny_model(name)
            path = tmp_path_factory.mktemp(name) / ("fused" if fused else "unfused")
            cache[name, fused] = model, export_onnx(model, path, fused=fused)
        return cache[name, fused]

    return get


def random_prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def requests(context: int) -> list[list[int]]:
    """Prompt lengths 1, 37 and 300 (or the longest the context holds with the new tokens), a mixed batch."""
    return [[1], [37], [min(300, context - NEW_TOKENS)], [37, 1, 20]]


def zoo_run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_equal_torch(artifacts, case):
    model, path = artifacts(*case)
    ort_engine, torch_engine = Engine.load(path), Engine.from_model(model)
    assert ort_engine.backend == "onnxruntime"
    for lengths in requests(model.config.max_seq_len):
        prompts = random_prompts(model.config.vocab_size, lengths)
        expected = torch_engine.generate(prompts, NEW_TOKENS)
        assert ort_engine.generate(prompts, NEW_TOKENS) == expected, lengths
    # the mixed batch through `zoo run --json`, and the prefill logits within fp32 tolerance
    ids_options = [f"--prompt-ids={','.join(map(str, p))}" for p in prompts]
    code, output = zoo_run(path, *ids_options, "--max-new-tokens", NEW_TOKENS, "--json")
    assert code == 0, output
    out = json.loads(output)
    assert out["tokens"] == expected and out["backend"] == "onnxruntime" and out["prompts"] == prompts
    ids = torch.tensor([p + [0] * (37 - len(p)) for p in prompts])
    lengths = torch.tensor([len(p) for p in prompts])
    with torch.no_grad():
        want, _ = model.prefill(ids, lengths, model.init_state(3, 37 + 1))
    runner = ort_engine.runner
    got, _ = runner.prefill(ids, lengths, runner.init_state(3, 37 + 1))
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_zoo_run_output_has_the_keys_of_zoo_generate(artifacts):
    _, path = artifacts("llama-tiny", True)
    code, output = zoo_run(path, "--prompt-ids", "1,2,3", "--prompt-ids", "9", "--max-new-tokens", "3", "--json")
    assert code == 0, output
    generated = CliRunner().invoke(main, ["generate", "llama-tiny", "--prompt-ids", "1,2,3", "--json"])
    assert set(json.loads(output)) == set(json.loads(generated.output))
    code, output = zoo_run(path, "--prompt-ids", "1,2,3", "--max-new-tokens", "3")
    assert code == 0 and output.startswith("[0] ") and "TTFT" in output


def record_resizes(runner, monkeypatch) -> list[int]:
    capacities, resize = [], runner.resize_cache

    def recorded_resize(state, capacity):
        capacities.append(capacity)
        return resize(state, capacity)

    monkeypatch.setattr(runner, "resize_cache", recorded_resize)
    return capacities


def test_dmc_cache_grows_during_decode(artifacts, monkeypatch):
    """The compressed cache is cut after the prefill and grown as heads fill it, through the same state
    manager on both runners: same capacities, tokens and compression ratios."""
    monkeypatch.setattr(engine, "CACHE_BUCKET", 4)  # small buckets, so the cache grows several times
    model, path = artifacts("dmc-tiny", True)
    prompts, new = random_prompts(model.config.vocab_size, [30, 3, 11], seed=3), 40
    ort_engine, torch_engine = Engine.load(path), Engine.from_model(model)
    ort_capacities = record_resizes(ort_engine.runner, monkeypatch)
    torch_capacities = record_resizes(torch_engine.runner, monkeypatch)
    got, want = ort_engine.generate_with_stats(prompts, new), torch_engine.generate_with_stats(prompts, new)
    assert got.tokens == want.tokens
    assert len(ort_capacities) >= 3 and ort_capacities == torch_capacities  # cut, then grown at least twice
    assert got.state_bytes == 2 * want.state_bytes  # the ping-pong twin of the state
    assert got.state_summary["compression"]["overall"] > 1.2
    for key in ("overall", "per_layer"):
        assert got.state_summary["compression"][key] == pytest.approx(want.state_summary["compression"][key])


def test_state_buffers_are_reused_across_steps(artifacts):
    """IO binding: every step writes its new state into the buffers the step before read (two sets that
    swap), and the logits into one buffer: no allocation per step."""
    _, path = artifacts("llama-tiny", True)
    runner = Engine.load(path).runner
    pointers, decode = [], runner.decode_step

    def recorded_decode(tokens, positions, state):
        logits, new_state = decode(tokens, positions, state)
        pointers.append(({k: t.data_ptr() for k, t in state.items()}, {k: t.data_ptr() for k, t in new_state.items()}))
        pointers[-1][1]["logits"] = logits.data_ptr()
        return logits, new_state

    runner.decode_step = recorded_decode
    steps = 12
    Engine.from_runner(runner).generate(random_prompts(256, [9, 4]), steps + 1)
    assert len(pointers) == steps
    for key in (e.key for e in runner.spec):
        inputs, outputs = {p[0][key] for p in pointers}, {p[1][key] for p in pointers}
        assert len(inputs | outputs) == 2  # two buffers per state tensor for the whole request
        for (before, after), (next_before, _) in zip(pointers, pointers[1:]):
            assert before[key] != after[key] and next_before[key] == after[key]
    assert len({p[1]["logits"] for p in pointers}) == 1
    assert runner.allocations == 2 * len(runner.spec)  # the initial state and its twin
    runner.allocations = 0
    Engine.from_runner(runner).generate(random_prompts(256, [9, 4]), steps + 1)  # same shapes: the twin is kept
    assert runner.allocations == len(runner.spec)


def test_sampling_options(artifacts):
    model, path = artifacts("llama-tiny", True)
    ort_engine, torch_engine = Engine.load(path), Engine.from_model(model)
    prompts = random_prompts(256, [4, 6])
    a = ort_engine.generate(prompts, 8, temperature=1.0, seed=7)
    assert a == ort_engine.generate(prompts, 8, temperature=1.0, seed=7)
    assert a != ort_engine.generate(prompts, 8, temperature=1.0, seed=8)
    assert a == torch_engine.generate(prompts, 8, temperature=1.0, seed=7)  # same logits, same generator draws
    greedy = ort_engine.generate(prompts, 8)
    assert ort_engine.generate(prompts, 8, temperature=0.7, top_k=1, seed=3) == greedy
    assert ort_engine.generate(prompts, 8, temperature=0.7, top_p=1e-6, seed=3) == greedy
    eos = greedy[0][2]
    stopped = ort_engine.generate(prompts, 8, eos_token_id=eos)
    assert stopped[0] == greedy[0][: greedy[0].index(eos) + 1]
    code, output = zoo_run(path, "--prompt-ids", "1,2", "--temperature", "1", "--top-k", "5", "--seed", "4", "--json")
    assert code == 0 and json.loads(output)["tokens"] == ort_engine.generate(
        [[1, 2]], 32, temperature=1, top_k=5, seed=4
    )
    code, output = zoo_run(path, "--prompt-ids", "1,2", "--top-p", "1.5")
    assert code == 1 and "top_p must be in (0, 1]" in output


@pytest.fixture
def artifact_copy(artifacts, tmp_path):
    """A copy of the fused llama-tiny artifact that a test may damage."""
    _, path = artifacts("llama-tiny", True)
    return shutil.copytree(path, tmp_path / "copy")


def edit_manifest(path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_load_errors_are_one_line(artifact_copy, tmp_path, monkeypatch):
    path = artifact_copy
    (tmp_path / "empty").mkdir()
    not_an_artifact = tmp_path / "empty"
    cases = [(tmp_path / "missing", "is not a directory"), (not_an_artifact, "has no manifest.json")]
    for target, message in cases:
        with pytest.raises(ZooError, match=message):
            Engine.load_artifact(target)
    code, output = zoo_run(tmp_path / "missing", "--prompt-ids", "1")
    assert code == 1 and output.strip() == f"Error: {tmp_path / 'missing'} is not a directory; an artifact is a " + (
        "directory written by `zoo export`"
    )
    code, output = zoo_run(path, "--prompt-ids", ",".join(["1"] * 300))
    assert code == 1 and "prompt 0 has 300 tokens, longer than the model's context of 256" in output
    with pytest.raises(ZooError, match="is an exported artifact .* runs on the onnxruntime or tensorrt backend"):
        Engine.load(path, backend="torch")
    with pytest.raises(ZooError, match="onnxruntime backend runs exported artifacts"):
        Engine.load("llama-tiny", backend="onnxruntime")
    assert Engine.load("llama-tiny").backend == "torch"
    with pytest.raises(ZooError, match="holds float32 graphs"):
        Engine.load(path, dtype=torch.float16)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"onnxruntime is not installed.*graph-zoo\[onnx\]"):
        Engine.load(path)
    code, output = zoo_run(path, "--prompt-ids", "1")
    assert code == 1 and "pip install 'graph-zoo[onnx]'" in output and len(output.strip().splitlines()) == 1


def test_a_text_artifact_takes_no_images(artifacts, tmp_path):
    from PIL import Image

    from runtime.retrieval import RetrievalError, retrieve

    _, path = artifacts("llama-tiny", True)
    Image.new("RGB", (8, 8)).save(tmp_path / "im.png")
    code, output = zoo_run(path, "--prompt-ids", "1,2", "--image", tmp_path / "im.png")
    assert code == 1 and "the llama family reads text only" in output and len(output.strip().splitlines()) == 1
    code, output = zoo_run(path, "--prompt-ids", "1,2", "--index", tmp_path)
    assert code == 2 and "give --image too" in output
    runner = Engine.load(path).runner
    assert not runner.takes_media and "media" not in runner.manifest
    with pytest.raises(RetrievalError, match="the llama family has no image encoder"):
        retrieve(runner, tmp_path, torch.zeros(1, 3, 8, 8), 1)


def replace_graph_consistently(path) -> None:
    """A decode.onnx that is not an ONNX model, with the manifest's size and sha256 updated to match."""
    from export.artifact import sha256_of

    (path / "decode.onnx").write_bytes(b"not a protobuf")
    record = {"size": 14, "sha256": sha256_of(path / "decode.onnx")}
    edit_manifest(path, lambda m: m["files"].update({"decode.onnx": record}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "decode.onnx").write_bytes(b"x" + (p / "decode.onnx").read_bytes()[1:]), "sha256"),
        (lambda p: (p / "prefill.onnx").write_bytes((p / "prefill.onnx").read_bytes()[:-10]), "corrupted"),
        (lambda p: (p / "decode.onnx").unlink(), "is missing decode.onnx"),
        (lambda p: edit_manifest(p, lambda m: m.update(format_version=99)), "version 99"),
        (lambda p: edit_manifest(p, lambda m: m["zoo_ops"].update(warp_drive={"version": 1})), "lacks"),
        (lambda p: (p / "manifest.json").write_text("{"), "not valid JSON"),
        (replace_graph_consistently, "ONNX Runtime cannot load"),
    ],
    ids=["sha256", "truncated", "missing-file", "format-version", "unknown-op", "bad-json", "not-onnx"],
)
def test_damaged_artifacts_are_refused(artifact_copy, damage, message):
    damage(artifact_copy)
    with pytest.raises(ZooError, match=message):
        Engine.load(artifact_copy)
    code, output = zoo_run(artifact_copy, "--prompt-ids", "1")
    assert code == 1 and message in output and len(output.strip().splitlines()) == 1


def test_bench_an_artifact(artifacts, monkeypatch):
    """`zoo bench DIR`: the onnxruntime backend only (the artifact has no torch weights), and the report
    says so and validates."""
    import jsonschema

    from benchmarks import machine
    from benchmarks.harness import Grid, run_bench
    from benchmarks.schema import REPORT_SCHEMA

    # the machine figures take most of a bench run; they are not what this test checks
    monkeypatch.setattr(machine, "measure_read_bandwidth", lambda device: 1e10)
    monkeypatch.setattr(machine, "measure_bandwidth", lambda device: 1e10)
    monkeypatch.setattr(machine, "measure_matmul_flops", lambda device, dtype: 1e11)
    calibration = {"calibration_s": 0.1, "calibration_runs_s": [0.1, 0.1, 0.1], "calibration_spread": 0.0}
    monkeypatch.setattr(machine, "calibrate", lambda: calibration)

    _, path = artifacts("llama-tiny", True)
    report = run_bench(str(path), Grid(("torch", "onnxruntime"), (1, 2), (5,), (3,), warmup=0, repeats=1))
    jsonschema.validate(report, REPORT_SCHEMA)
    assert {r["runner"] for r in report["results"]} == {"onnxruntime"} and len(report["results"]) == 2
    assert report["grid"]["backends"] == ["onnxruntime"] and "only, not on torch" in report["notes"][0]
    assert report["model"]["family"] == "llama"
    with pytest.raises(ZooError, match="--compare hf needs the model's weights"):
        run_bench(str(path), Grid(("onnxruntime",), (1,), (5,), (3,)), compare="hf")


@pytest.mark.slow
def test_demo_script(tmp_path, capsys):
    """`make demo`'s last step on a tiny model: export, load into ONNX Runtime, compare with torch."""
    from runtime.demo import main as demo

    demo(["--model", "llama-tiny", "--out", str(tmp_path / "demo"), "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert "greedy tokens, onnxruntime vs torch: 10/10 match (all)" in out and "TPOT" in out
