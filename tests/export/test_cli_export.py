"""`zoo export`: success, the --overwrite rules, a bad --format, an unwritable -o, and HF checkpoints
exported straight from their directory; bad input exits 1 with one line and no traceback."""

import json

import pytest
import torch

import zoo
from export.artifact import verify
from tests.conftest import informative_weights
from tests.export.parity import assert_parity, sessions
from tests.test_bad_inputs import assert_error, cli, snapshot, workdir  # noqa: F401 (a fixture)
from tests.zoo.test_moe import MIXTRAL  # the Mixtral twin of the MoE parity tests
from zoo.registry import get_config, load_model


@pytest.mark.slow
def test_export_writes_a_verified_artifact_and_overwrite_rules(workdir):  # noqa: F811
    result = cli("export", "gpt-tiny", "--format", "onnx", "--unfused", "-o", "art", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    manifest = verify(workdir / "art")
    assert (manifest["family"], manifest["fused"], manifest["dtype"]) == ("gpt", False, "float32")
    before = snapshot(workdir)
    assert_error(cli("export", "gpt-tiny", "-o", "art"), "already holds a zoo artifact", "--overwrite")
    assert_error(cli("export", "gpt-tiny", "-o", "data"), "is not empty", "not a zoo artifact")
    assert_error(cli("export", "gpt-tiny", "-o", ".", "--overwrite"), "not a zoo artifact")
    assert snapshot(workdir) == before
    (workdir / "art" / "notes.md").write_text("the user's")
    result = cli("export", "gpt-tiny", "--unfused", "-o", "art", "--overwrite", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert (workdir / "art" / "notes.md").read_text() == "the user's"
    assert verify(workdir / "art")["files"]["decode.onnx"] != manifest["files"]["decode.onnx"]  # other weights


def test_bad_format_model_and_output(workdir):  # noqa: F811
    before = snapshot(workdir)
    assert_error(cli("export", "llama-tiny", "--max-batch", "4", "-o", "out"), "--format tensorrt only", exit_code=2)
    assert_error(cli("export", "llama-tiny", "--quant", "int2", "-o", "out"), "int2", exit_code=2)
    assert_error(cli("export", "llama-tiny", "--quant", "int8", "--dtype", "float16", "-o", "out"), "float32")
    assert_error(cli("export", "llama-tiny", "--format", "tflite", "-o", "out"), "tflite", exit_code=2)
    assert_error(cli("export", "no-such-model", "-o", "out"), "no-such-model")
    assert_error(cli("export", "llama-tiny", "-o", "notes.txt"), "is a file", exit_code=2)
    assert_error(cli("export", "llama-tiny", "-o", "missing/out"), "no such directory")
    assert_error(cli("export", "llama-tiny", "-o", "/proc/zoo-artifact"), "cannot write")
    assert_error(cli("export", "llama-tiny"), "-o", exit_code=2)
    assert snapshot(workdir) == before


def test_export_help():
    result = cli("export", "--help")
    assert result.exit_code == 0 and "--unfused" in result.output and "--overwrite" in result.output


HF_CASES = [
    pytest.param(get_config("llama-tiny"), id="llama"),
    pytest.param(get_config("mamba2-tiny"), id="mamba2", marks=pytest.mark.slow),
    pytest.param(MIXTRAL, id="mixtral", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("config", HF_CASES)
def test_an_hf_checkpoint_exports_from_its_directory(hf_checkpoint, tmp_path, config):
    path, _ = hf_checkpoint(config)
    result = cli("export", path, "-o", tmp_path / "art")
    assert result.exit_code == 0, result.output
    manifest = verify(tmp_path / "art")
    assert manifest["family"] == config.family and manifest["zoo_ops"]
    model = load_model(str(path)).eval()
    graphs = sessions(tmp_path / "art")
    for lengths in ([1], [37], [37, 3, 20]):
        assert_parity(graphs, model, lengths)
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["config"] == model.config.to_dict()


def test_weights_past_the_threshold_go_to_external_data(tmp_path):
    from export.onnx import export_onnx

    model = informative_weights(zoo.build("gpt-tiny")).eval()
    path = export_onnx(model, tmp_path / "art", fused=False, external_data_threshold=1024)
    manifest = verify(path)
    for phase in ("prefill", "decode"):
        graph = manifest["graphs"][phase]
        assert graph["external_data"] == f"{phase}.onnx.data"
        assert manifest["files"][graph["external_data"]]["size"] > manifest["files"][graph["file"]]["size"]
    assert_parity(sessions(path), model, [37, 1])


@pytest.mark.slow
def test_a_float16_export_runs_in_onnx_runtime(workdir):  # noqa: F811
    import numpy as np

    from tests.export.parity import prompts

    assert cli("export", "llama-tiny", "--dtype", "float16", "-o", "art").exit_code == 0
    assert verify(workdir / "art")["dtype"] == "float16"
    model = zoo.build("llama-tiny", dtype=torch.float16).eval()  # the CLI's weights: seed 0
    ids, lengths = prompts(model.config.vocab_size, [37, 5])
    state = model.init_state(2, 41)
    feeds = {"input_ids": ids.numpy(), "lengths": lengths.numpy()}
    feeds |= {e.qualified_name: state[e.key].numpy() for e in model.state_spec()}
    got = sessions(workdir / "art")["prefill"].run(["logits"], feeds)[0]
    with torch.no_grad():
        want = model.prefill(ids, lengths, model.init_state(2, 41))[0]
    np.testing.assert_allclose(got.astype(np.float32), want.float().numpy(), atol=5e-3, rtol=1e-2)


def test_an_export_failure_is_one_line_naming_its_cause(workdir, monkeypatch):  # noqa: F811
    import export.onnx

    def failing_export(*args, **kwargs):
        try:
            raise KeyError("aten.frobnicate has no ONNX translation")
        except KeyError as exc:
            raise RuntimeError("Failed to convert the exported program to an ONNX model.\nNext steps: ...") from exc

    monkeypatch.setattr(export.onnx.torch.onnx, "export", failing_export)
    before = snapshot(workdir)
    assert_error(cli("export", "gpt-tiny", "-o", "art"), "prefill step failed", "aten.frobnicate")
    assert snapshot(workdir) == before


def test_quantized_export_records_the_format_and_runs(workdir):  # noqa: F811
    result = cli("export", "gpt-tiny", "--quant", "int8", "-o", "art", "--seed", "2")
    assert result.exit_code == 0 and "(fused, int8)" in result.output, result.output
    manifest = verify(workdir / "art")
    assert manifest["quantization"]["format"] == "int8" and manifest["quantization"]["quantized_layers"]
    import onnx

    decode = onnx.load(workdir / "art" / "decode.onnx", load_external_data=False)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in decode.graph.node}
    run = cli("run", "art", "--prompt-ids", "3,1,4", "--prompt-ids", "1", "--max-new-tokens", "3", "--json")
    assert run.exit_code == 0, run.output
    assert [len(tokens) for tokens in json.loads(run.output)["tokens"]] == [3, 3]
