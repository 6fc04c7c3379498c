"""Artifacts shared by the export tests: each tiny family exported once per session with `--format
tensorrt`, which holds the fused ONNX artifact (what ONNX Runtime runs) and the TensorRT-ready graphs, so
the ONNX parity tests and the TensorRT graph checks read the same export."""

import pytest

import zoo
from tests.conftest import informative_weights

TENSORRT_MAX_BATCH, TENSORRT_MAX_SEQ = 4, 48


@pytest.fixture(scope="session")
def fused_artifacts(tmp_path_factory):
    """Factory: (model, artifact directory) of a tiny model with informative weights, exported once."""
    from export.tensorrt import export_tensorrt

    made = {}

    def get(name: str):
        if name not in made:
            model = informative_weights(zoo.build(name)).eval()
            path = tmp_path_factory.mktemp(name) / "artifact"
            made[name] = model, export_tensorrt(model, path, TENSORRT_MAX_BATCH, TENSORRT_MAX_SEQ)[0]
        return made[name]

    return get
