"""The TensorRT runner (runtime/tensorrt_runner.py): each reason it cannot start is one line, checked in
order (TensorRT missing, no CUDA GPU, not a TensorRT export, no engines: with the command that builds
them); on a machine with TensorRT and a GPU (marked), the engines generate the torch engine's greedy
tokens, with the state buffers and decode graphs reused across steps and requests."""

import importlib.util
import sys
import types

import pytest
import torch

import zoo
from export.artifact import write_artifact
from runtime.runners import artifact_runner, check_backend
from runtime.tensorrt_runner import TensorRTRunner
from zoo.errors import MissingDependencyError, ZooError


def small_artifact(path, tensorrt_section=None):
    """A verified artifact directory with a manifest and one file (no real graphs: the runner fails first)."""

    def write(tmp):
        (tmp / "prefill.onnx").write_bytes(b"not a graph")
        body = {"family": "llama", "config": {}, "dtype": "float32", "graphs": {}, "zoo_ops": {}}
        return body if tensorrt_section is None else {**body, "export_format": "tensorrt", "tensorrt": tensorrt_section}

    return write_artifact(path, write)


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """An importable (empty) tensorrt module: the runner's later checks are reached."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))


def test_missing_tensorrt_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    with pytest.raises(MissingDependencyError, match=r"^tensorrt is not installed.*graph-zoo\[tensorrt\]'$"):
        TensorRTRunner(small_artifact(tmp_path / "art"))
    with pytest.raises(MissingDependencyError):
        artifact_runner(tmp_path / "art", "tensorrt")


def test_missing_gpu_points_to_onnxruntime(tmp_path, fake_tensorrt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ZooError, match="needs a CUDA GPU and this machine has none.*onnxruntime") as error:
        TensorRTRunner(small_artifact(tmp_path / "art"))
    assert "\n" not in str(error.value)


def test_an_artifact_without_engines_names_the_build_command(tmp_path, fake_tensorrt, monkeypatch):
    from export.artifact import ArtifactError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    onnx_only = small_artifact(tmp_path / "onnx")
    with pytest.raises(ArtifactError, match="is not a TensorRT export.*--format tensorrt"):
        TensorRTRunner(onnx_only)
    no_engines = small_artifact(tmp_path / "trt", {"engines": None})
    with pytest.raises(ArtifactError, match=r"holds no TensorRT engines.*: python .*/trt/tensorrt/build_engines\.py$"):
        artifact_runner(no_engines, "tensorrt")


def test_a_corrupted_artifact_is_refused_before_the_engines(tmp_path, fake_tensorrt, monkeypatch):
    from export.artifact import ArtifactError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    path = small_artifact(tmp_path / "art", {"engines": {"files": {}}})
    (path / "prefill.onnx").write_bytes(b"changed by hand")
    with pytest.raises(ArtifactError, match="corrupted"):
        TensorRTRunner(path)


def test_the_backend_entry_points(tmp_path, fake_tensorrt):
    with pytest.raises(ZooError, match="runs exported artifacts.*--format tensorrt"):
        check_backend("tensorrt")
    check_backend("tensorrt", allow_artifacts=True)  # the caller exports first
    with pytest.raises(ZooError, match="an artifact runs on onnxruntime or tensorrt, not 'torch'"):
        artifact_runner(tmp_path, "torch")


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engines_generate_the_torch_engines_greedy_tokens(tmp_path):
    from export.tensorrt import export_tensorrt
    from runtime import Engine
    from tests.conftest import informative_weights

    model = informative_weights(zoo.build("llama-tiny"), seed=1).eval()
    path, _, missing = export_tensorrt(model, tmp_path / "art", max_batch=4, max_seq=64)
    assert missing is None
    runner = TensorRTRunner(path)
    engine, reference = Engine.from_runner(runner), Engine.from_model(model.cuda())
    generator = torch.Generator().manual_seed(0)
    for lengths in ([1], [37], [37, 1, 20]):
        prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=generator).tolist() for n in lengths]
        assert engine.generate(prompts, 6) == reference.generate(prompts, 6)
    allocations, graphs = runner.allocations, runner._decode[3].graphs
    assert engine.generate(prompts, 6) == reference.generate(prompts, 6)  # its buffers and graphs again
    assert runner.allocations == allocations and runner._decode[3].graphs == graphs


def test_zoo_run_on_tensorrt_without_it_is_one_line(tmp_path):
    from tests.test_bad_inputs import assert_error, cli

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the missing-TensorRT message cannot occur")
    result = cli("run", str(tmp_path), "--backend", "tensorrt", "--prompt-ids", "1,2", "--max-new-tokens", "2")
    assert_error(result, "tensorrt is not installed", "graph-zoo[tensorrt]")
