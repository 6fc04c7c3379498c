"""Artifact directories: graph files plus `manifest.json` (format and version, the model, per graph its
inputs and outputs, the zoo ops used, tool versions, and the size and sha256 of every file).

An artifact is written to a temporary sibling directory and renamed into place only when complete
(zoo.checkpoint.write_directory_atomically); a non-empty directory that is not an artifact is never
written into. `load_manifest` and `verify` are what a runner calls before it trusts a directory: every
problem is one ArtifactError line naming it.
"""

import json
import os
import tempfile
from pathlib import Path

from zoo.checkpoint import sha256_of
from zoo.errors import ZooError

FORMAT = "zoo-artifact"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
REQUIRED_KEYS = ("family", "config", "dtype", "graphs", "zoo_ops", "files")


class ArtifactError(ZooError):
    """An artifact directory that is missing, malformed, corrupted or made for another version."""


def file_records(root: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under root except the manifest."""
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "onnx", "onnxscript", "onnxruntime", "graph-zoo"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def is_artifact(path: Path) -> bool:
    """Whether `path` holds a manifest this project wrote (any version: an old artifact may be replaced)."""
    try:
        return json.loads((Path(path) / MANIFEST_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def owned_files(path: Path) -> tuple[str, ...]:
    """The files an existing artifact at `path` lists (replaced by a new export; others are the user's)."""
    try:
        files = json.loads((Path(path) / MANIFEST_FILE).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        files = {}
    return (MANIFEST_FILE, *(name.split("/")[0] for name in files))


def check_writable(path: Path) -> None:
    """Fail now, before a slow export, if the artifact's parent directory cannot take a new directory."""
    from zoo.errors import OutputError

    path = Path(path).expanduser().absolute()
    try:
        Path(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=path.parent)).rmdir()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_artifact(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Atomically write an artifact: `write(tmp_dir)` writes the graph files and returns the manifest body;
    the format fields and file records are added here, last."""
    from zoo.checkpoint import write_directory_atomically

    def write_all(tmp: Path):
        body = write(tmp)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **body, "files": file_records(tmp)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    return write_directory_atomically(
        path, write_all, owned_files(Path(path)), overwrite, holds_ours=is_artifact, kind="zoo artifact"
    )


def load_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the artifact at `path`, checked for format, version and the zoo ops it names (not
    the files: `verify`)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory; an artifact is a directory written by `zoo export`")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} has no {MANIFEST_FILE}; it is not an artifact written by `zoo export`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path} holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is of format {manifest.get('format')!r}, not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} is a {FORMAT} of version {manifest.get('format_version')!r}; this version of graph-zoo reads "
            f"version {FORMAT_VERSION} (export it again)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{manifest_path} lacks the field(s) {', '.join(missing)}")
    check_zoo_ops(manifest, manifest_path)
    return manifest


def check_zoo_ops(manifest: dict, manifest_path: Path) -> None:
    from zoo.ops.registry import zoo_ops

    known = zoo_ops()
    if not isinstance(manifest["zoo_ops"], dict):
        raise ArtifactError(f"{manifest_path}: 'zoo_ops' is not an object")
    for name, entry in manifest["zoo_ops"].items():
        if name not in known:
            raise ArtifactError(f"{manifest_path} uses zoo op {name!r}, which this version of graph-zoo lacks")
        version = entry.get("version") if isinstance(entry, dict) else None
        if version != known[name].version:
            raise ArtifactError(
                f"{manifest_path} uses zoo op {name} version {version!r}; this graph-zoo has version "
                f"{known[name].version}"
            )


def verify(path: str | os.PathLike) -> dict:
    """load_manifest, then every file the manifest lists: present, of its size and sha256."""
    path = Path(path)
    manifest = load_manifest(path)
    if not isinstance(manifest["files"], dict):
        raise ArtifactError(f"{path / MANIFEST_FILE}: 'files' is not an object")
    for name, record in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{path} is missing {name}, which its manifest lists")
        size = file.stat().st_size
        if size != record.get("size"):
            raise ArtifactError(f"{file} has {size} bytes, the manifest says {record.get('size')}: it is corrupted")
        if sha256_of(file) != record.get("sha256"):
            raise ArtifactError(f"{file} does not match its sha256 in the manifest: it is corrupted")
    return manifest
