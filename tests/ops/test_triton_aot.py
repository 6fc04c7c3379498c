"""`zoo kernels`: every Triton kernel of the op library compiles for sm_90 (H100) on this GPU-less machine."""

import json

import pytest
from click.testing import CliRunner

from zoo.cli import main
from zoo.ops.registry import op_folders
from zoo.ops.triton_aot import kernel_specs


def test_every_op_folder_has_triton_kernels():
    folders_with_kernels = {op for op, _ in kernel_specs()}
    assert folders_with_kernels == set(op_folders())
    names = [spec.name for _, spec in kernel_specs()]
    assert len(names) == len(set(names)), "kernel names must be unique"


@pytest.mark.slow
def test_zoo_kernels_compiles_all_for_sm90():
    result = CliRunner().invoke(main, ["kernels", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("[") :])
    assert len(rows) == len(kernel_specs())
    for row in rows:
        assert row["ok"] and row["target"] == "sm_90", row
        assert row["ptx_bytes"] > 1000 and row["num_warps"] >= 1 and row["shared_bytes"] >= 0
        assert row["registers"] is None or 0 < row["registers"] <= 255


def test_a_kernel_that_fails_to_compile_is_listed_and_exits_1(monkeypatch):
    import zoo.ops.triton_aot

    failed = {"ok": False, "name": "broken", "op": "rms_norm", "error": "CompilationError: at 3:4"}
    monkeypatch.setattr(zoo.ops.triton_aot, "compile_all", lambda capability: [failed])
    result = CliRunner().invoke(main, ["kernels"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "FAILED" in result.output and "Error: 1 of 1 kernels failed to compile for sm_90" in result.output
