"""Artifact directories: atomic writes, and each problem `load_manifest` / `verify` reports on one line."""

import json
from pathlib import Path

import pytest

import export.onnx
import zoo
from export.artifact import MANIFEST_FILE, ArtifactError, load_manifest, verify, write_artifact
from export.onnx import export_onnx
from zoo.errors import OutputError
from zoo.ops.registry import zoo_ops


def write_small_artifact(path: Path, **overrides) -> Path:
    """An artifact with one small graph file and a manifest naming one zoo op (no export: fast)."""

    def write(tmp: Path) -> dict:
        (tmp / "decode.onnx").write_bytes(b"graph bytes")
        body = {
            "family": "llama",
            "config": {},
            "dtype": "float32",
            "fused": True,
            "graphs": {"decode": {"file": "decode.onnx"}},
            "zoo_ops": {"rms_norm": {"version": zoo_ops()["rms_norm"].version}},
        }
        return body | overrides

    return write_artifact(path, write)


def edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    edit(manifest)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def assert_one_line_error(path, *fragments: str, check=verify) -> None:
    with pytest.raises(ArtifactError) as info:
        check(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_good_artifact_verifies(tmp_path):
    path = write_small_artifact(tmp_path / "a")
    manifest = verify(path)
    assert manifest["format"] == "zoo-artifact" and manifest["format_version"] == 1
    assert manifest["files"]["decode.onnx"]["size"] == len(b"graph bytes")
    assert load_manifest(path) == manifest


def test_not_a_directory_and_no_manifest(tmp_path):
    assert_one_line_error(tmp_path / "missing", "is not a directory")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(tmp_path / "file", "is not a directory")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(tmp_path / "empty", "has no manifest.json", check=load_manifest)


@pytest.mark.parametrize(
    ("content", "fragment"), [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list, not an object")]
)
def test_a_manifest_that_is_not_a_json_object(tmp_path, content, fragment):
    path = write_small_artifact(tmp_path / "a")
    (path / MANIFEST_FILE).write_text(content)
    assert_one_line_error(path, fragment, check=load_manifest)


def test_another_format_or_version(tmp_path):
    path = write_small_artifact(tmp_path / "a")
    edit_manifest(path, lambda m: m.update(format_version=2))
    assert_one_line_error(path, "version 2", "reads version 1")
    edit_manifest(path, lambda m: m.update(format="onnx-genai"))
    assert_one_line_error(path, "'onnx-genai'", "not 'zoo-artifact'")


def test_a_missing_or_corrupted_file(tmp_path):
    path = write_small_artifact(tmp_path / "a")
    (path / "decode.onnx").write_bytes(b"graph bytez")  # same size, other bytes
    assert_one_line_error(path, "decode.onnx", "sha256")
    (path / "decode.onnx").write_bytes(b"graph")
    assert_one_line_error(path, "decode.onnx", "has 5 bytes", "says 11")
    (path / "decode.onnx").unlink()
    assert_one_line_error(path, "missing decode.onnx")


def test_zoo_ops_this_version_lacks(tmp_path):
    path = write_small_artifact(tmp_path / "a")
    edit_manifest(path, lambda m: m["zoo_ops"].update(flash_mla={"version": 1}))
    assert_one_line_error(path, "zoo op 'flash_mla'", "lacks", check=load_manifest)
    edit_manifest(path, lambda m: m.update(zoo_ops={"rms_norm": {"version": 7}}))
    assert_one_line_error(path, "rms_norm version 7", check=load_manifest)


def test_a_users_directory_is_never_written_into(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a zoo artifact"):
        write_small_artifact(user)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]


def test_an_artifact_is_replaced_only_with_overwrite_and_keeps_user_files(tmp_path):
    path = write_small_artifact(tmp_path / "a")
    (path / "README.txt").write_text("the user's")
    with pytest.raises(OutputError, match="--overwrite"):
        write_small_artifact(path)

    def write(tmp: Path) -> dict:
        (tmp / "prefill.onnx").write_bytes(b"new graph")
        return {"family": "llama", "config": {}, "dtype": "float32", "graphs": {}, "zoo_ops": {}}

    write_artifact(path, write, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == ["README.txt", "manifest.json", "prefill.onnx"]
    assert set(verify(path)["files"]) == {"prefill.onnx"}  # the user's file is kept but not claimed


def test_a_crash_mid_export_leaves_no_artifact_and_no_temp_dir(tmp_path, monkeypatch):
    """export_graph stubbed (fast); save_graph writes its file and then fails, as a crash would."""
    monkeypatch.setattr(export.onnx, "export_graph", lambda model, phase, fused: {"zoo_nodes": {}})

    def crash(graph, directory, phase, threshold):
        (directory / f"{phase}.onnx").write_bytes(b"half a graph")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export.onnx, "save_graph", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_onnx(zoo.build("llama-tiny"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
