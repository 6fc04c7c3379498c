"""The t5, hourglass and dynpool families through `zoo export` (fused) and ONNX Runtime: the artifact's
greedy tokens equal the torch engine's on a ragged batch whose lengths are and are not multiples of the
shortening factors, and t5's artifact says its prompts are encoder inputs."""

import dataclasses

import pytest
import torch

import zoo
from export.artifact import verify
from export.onnx import export_onnx
from runtime import Engine
from tests.conftest import informative_weights
from zoo.registry import build_from_config

PROMPTS = [[5, 6, 7, 8, 1, 2, 3], [9], [4, 4, 2, 7, 1, 3]]  # 7, 1 and 6 tokens


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t5-tiny", "hourglass-tiny", "dynpool-tiny"])
def test_onnxruntime_generates_the_torch_tokens(name, tmp_path):
    config = zoo.get_config(name)
    if name == "hourglass-tiny":  # one valley of factor 3 exports in a third of the nested tiny model's time
        config = dataclasses.replace(config, hierarchy="1@1 1@3 1@1", downsampling="linear", upsampling="linear")
    model = informative_weights(build_from_config(config), seed=5).eval()
    path = export_onnx(model, tmp_path / "artifact")
    assert verify(path)["encoder_decoder"] is (name == "t5-tiny")
    with torch.no_grad():
        want = Engine(model).generate(PROMPTS, 6)
    artifact = Engine.load(path)
    assert artifact.backend == "onnxruntime" and artifact.encoder_decoder is (name == "t5-tiny")
    assert artifact.generate(PROMPTS, 6) == want
