"""Checkpoint IO: safetensors directories (single file or sharded), strict loading, atomic saving.

Nothing here unpickles: safetensors only. A zoo-format directory holds config.json
({"zoo_family": ..., "config": {...}}) and model.safetensors with the model's own parameter names.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from zoo.errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_config_json(path: str | os.PathLike) -> dict:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}; expected an HF-format or zoo checkpoint directory")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc


def load_safetensors_dir(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of `path`/model.safetensors, or of the shards its index lists."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if (path / INDEX_FILE).is_file():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
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


def write_directory_atomically(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_dir) in a temporary sibling of `path`, then move it into place.

    An interrupted write leaves no half-written directory at `path`; an existing `path` is replaced only
    after the new one is complete.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(backup)
            tmp.rename(path)
            shutil.rmtree(backup)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_zoo_checkpoint(path: str | os.PathLike, family: str, config: dict, state_dict: dict) -> Path:
    from safetensors.torch import save_file

    def write(tmp: Path):
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt", "zoo_family": family})
        (tmp / CONFIG_FILE).write_text(json.dumps({"zoo_family": family, "config": config}, indent=2))

    return write_directory_atomically(path, write)


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
