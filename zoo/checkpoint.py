"""Checkpoint IO: safetensors directories (single file or sharded), strict loading, atomic saving.

Nothing here unpickles arbitrary objects: safetensors, or torch files read with weights_only=True
(tensors and plain containers only). A zoo-format directory holds config.json
({"zoo_family": ..., "config": {...}}) and model.safetensors with the model's own parameter names.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from zoo.errors import CheckpointError, OutputError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config_json(path: str | os.PathLike) -> dict:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}; expected an HF-format or zoo checkpoint directory")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path} holds a JSON {type(raw).__name__}, not an object of config fields")
    return raw


def load_safetensors_dir(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of `path`/model.safetensors, or of the shards its index lists."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if (path / INDEX_FILE).is_file():
        try:
            files = sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path / INDEX_FILE} is not a safetensors index (a 'weight_map' object): {exc}")
    elif (path / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        found = sorted(p.name for p in path.iterdir())
        raise CheckpointError(
            f"{path} has neither {WEIGHTS_FILE} nor {INDEX_FILE} (found: {', '.join(found) or 'nothing'}); "
            "only safetensors checkpoints are loaded"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors.update(load_file(path / name))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {path / name}: {exc}") from exc
    return tensors


def rename_keys(
    state_dict: dict[str, torch.Tensor], rules: list[tuple[str, str]], ignore: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map keys by the first matching (regex, replacement) rule; return (renamed, keys no rule matched).

    Keys matching a regex of `ignore` (buffers that old checkpoints saved) are dropped silently.
    """
    renamed, unexpected = {}, []
    for key, tensor in state_dict.items():
        if any(re.fullmatch(pattern, key) for pattern in ignore):
            continue
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                renamed[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unexpected.append(key)
    return renamed, unexpected


def convert_with_rules(
    tensors: dict[str, torch.Tensor], rules, tied: bool, format_name: str, ignore: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A converter's renaming: drop a tied model's lm_head copy, rename by `rules`; returns (renamed,
    keys no rule maps), or fails when nothing matched (the directory holds another format)."""
    if tied:
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    renamed, unexpected = rename_keys(tensors, rules, ignore)
    if not renamed:
        raise CheckpointError(f"no tensor of the {format_name} layout found (saw: {', '.join(sorted(tensors)[:5])})")
    return renamed, unexpected


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, unexpected: list[str] = ()
) -> None:
    """Copy `state_dict` into `model`, or raise one CheckpointError naming every missing, unexpected and
    mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(unexpected) | (set(state_dict) - set(expected)))
    mis_shaped = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if items:
            problems.append(f"{len(items)} {title} tensor(s):\n  " + "\n  ".join(items))
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match the model:\n" + "\n".join(problems))
    model.load_state_dict(state_dict, strict=True)


def user_file_mode(directory: bool = False) -> int:
    """The permissions a file (0666) or directory (0777) gets when a user creates it: masked by the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _apply_user_modes(root: Path) -> None:
    """tempfile creates 0700 directories and 0600 files; give what the project writes normal permissions."""
    root.chmod(user_file_mode(directory=True))
    for item in root.rglob("*"):
        item.chmod(user_file_mode(directory=item.is_dir()))


def is_zoo_checkpoint(path: Path) -> bool:
    """Whether `path` holds a checkpoint this project wrote (config.json naming a zoo_family)."""
    try:
        return "zoo_family" in read_config_json(path)
    except CheckpointError:
        return False


def check_output_directory(
    path: str | os.PathLike, overwrite: bool = False, holds_ours=is_zoo_checkpoint, kind: str = "zoo checkpoint"
) -> Path:
    """Refuse an output directory whose contents would be lost, before any work is done.

    `path` may be missing or empty. A non-empty `path` is accepted only when it holds a `kind` the project
    wrote (`holds_ours(path)`) and `overwrite` is set. Returns the absolute path."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a directory; choose another output directory")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: no such directory {path.parent}")
    if path.is_dir() and any(path.iterdir()):
        if not holds_ours(path):
            raise OutputError(
                f"{path} is not empty and is not a {kind}; refusing to write into it (nothing was changed)"
            )
        if not overwrite:
            raise OutputError(f"{path} already holds a {kind}; pass --overwrite (overwrite=True) to replace it")
    return path


def write_directory_atomically(
    path: str | os.PathLike,
    write,
    owned_files: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE),
    overwrite: bool = False,
    holds_ours=is_zoo_checkpoint,
    kind: str = "zoo checkpoint",
) -> Path:
    """Call write(tmp_dir) in a temporary sibling of `path`, then move it into place.

    Nothing the project did not write is ever deleted: an existing non-empty `path` must hold a `kind`
    (check_output_directory) and is replaced only with `overwrite`; files in it other than `owned_files`
    (a tokenizer a user added, say) are carried over into the new directory. An interrupted write leaves no
    half-written directory at `path`, and the old one stays whole until the new one is complete. Written
    files get the permissions the umask gives (not tempfile's 0600)."""
    path = check_output_directory(path, overwrite, holds_ours, kind)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    carried: list[str] = []  # the user's files moved from the old directory into the new one
    try:
        write(tmp)
        _apply_user_modes(tmp)
        if not path.is_dir():
            tmp.rename(path)
            return path
        for item in path.iterdir():
            if item.name not in owned_files and not (tmp / item.name).exists():
                item.rename(tmp / item.name)  # unchanged, into the new directory
                carried.append(item.name)
        backup = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(backup)
        try:
            tmp.rename(path)
        except BaseException:
            backup.rename(path)
            raise
    except BaseException as exc:
        if tmp.is_dir():  # not in place: give the user's files back to the old directory, drop ours
            for name in carried:
                (tmp / name).rename(path / name)
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    shutil.rmtree(backup)  # holds only files this project wrote
    return path


def save_zoo_checkpoint(
    path: str | os.PathLike, family: str, config: dict, state_dict: dict, overwrite: bool = False
) -> Path:
    from safetensors.torch import save_file

    def write(tmp: Path):
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt", "zoo_family": family})
        (tmp / CONFIG_FILE).write_text(json.dumps({"zoo_family": family, "config": config}, indent=2))

    return write_directory_atomically(path, write, overwrite=overwrite)


def load_weights_only(file: Path, safe_globals: tuple = (), mmap: bool = False):
    """torch.load with weights_only=True (tensors and plain containers, nothing else is built), with errors
    that say what is wrong with the file instead of torch's advice to turn the safety check off."""
    import pickle

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{file} holds Python objects other than tensors; it is refused for safety (only weights-only "
            "torch files are read: save it with tensors and plain containers, or as safetensors)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {file} as a weights-only torch file: {exc}") from exc


HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "relu2": "relu2",
}


def activation_from_hf(name: str) -> str:
    try:
        return HF_ACTIVATIONS[name]
    except KeyError:
        raise CheckpointError(f"unsupported activation {name!r}; supported: {', '.join(HF_ACTIVATIONS)}") from None


def check_output_file(path: str | os.PathLike, holds_ours, kind: str) -> Path:
    """Check, before any work is done, that `path` can be written without destroying anything: its
    directory exists and is writable (a file is created there and removed), and an existing `path` is a
    `kind` this project wrote (`holds_ours(path)`). Returns the absolute path."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: no such directory {path.parent}")
    if path.exists() and not holds_ours(path):
        raise OutputError(f"{path} exists and is not a {kind}; refusing to overwrite it (choose another name)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(probe)
    return path


def write_file_atomically(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path) for a temporary sibling of `path`, then rename it into place (umask permissions)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, user_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
