"""Artifacts shared by the export tests: each tiny family exported once per test run with `--format
tensorrt`, which holds the fused ONNX artifact (what ONNX Runtime runs) and the TensorRT-ready graphs, so
the ONNX parity tests and the TensorRT graph checks read the same export.

Under pytest-xdist (`make test`) the export is shared by the workers: the first to ask for a family exports
it into the run's common temporary directory while holding that family's file lock, and the others wait
for the lock and read the finished artifact (an export is written atomically, so a directory that exists
is complete)."""

import os

import pytest
from filelock import FileLock

import zoo
from tests.conftest import informative_weights

TENSORRT_MAX_BATCH, TENSORRT_MAX_SEQ = 4, 48


@pytest.fixture(scope="session")
def fused_artifacts(tmp_path_factory):
    """Factory: (model, artifact directory) of a tiny model with informative weights, exported once."""
    from export.tensorrt import export_tensorrt

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # every worker's basetemp sits in the run's common directory
    shared = root / "fused-artifacts"
    shared.mkdir(exist_ok=True)
    made = {}

    def get(name: str):
        if name not in made:
            model = informative_weights(zoo.build(name)).eval()
            path = shared / name
            with FileLock(str(shared / f"{name}.lock")):
                if not path.is_dir():
                    export_tensorrt(model, path, TENSORRT_MAX_BATCH, TENSORRT_MAX_SEQ)
            made[name] = model, path
        return made[name]

    return get
