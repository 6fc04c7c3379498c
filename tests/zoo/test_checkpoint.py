"""Checkpoint errors name the problem; zoo-format directories round-trip and are written atomically."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.checkpoint import write_directory_atomically
from zoo.errors import CheckpointError
from zoo.models.llama import LlamaConfig

CONFIG = LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)


def rewrite_weights(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def test_missing_unexpected_and_misshaped_tensors_are_listed_together(hf_checkpoint):
    path, _ = hf_checkpoint(CONFIG)

    def corrupt(tensors):
        del tensors["model.layers.1.mlp.up_proj.weight"]
        tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
        tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(7, 32)

    rewrite_weights(path, corrupt)
    with pytest.raises(CheckpointError) as err:
        zoo.from_pretrained(path)
    message = str(err.value)
    assert "1 missing tensor(s):\n  layers.1.mlp.w_up.weight" in message
    assert "1 unexpected tensor(s):\n  model.layers.0.self_attn.extra.weight" in message
    assert "layers.0.attn.wk.weight: checkpoint (7, 32), model (16, 32)" in message


def test_directory_without_config_or_weights(tmp_path, hf_checkpoint):
    with pytest.raises(CheckpointError, match="has no config.json"):
        zoo.from_pretrained(tmp_path)
    path, _ = hf_checkpoint(CONFIG)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only safetensors checkpoints are loaded"):
        zoo.from_pretrained(path)


def test_corrupted_weights_file(hf_checkpoint):
    path, _ = hf_checkpoint(CONFIG)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        zoo.from_pretrained(path)


def test_unsupported_model_type_and_options(hf_checkpoint):
    path, _ = hf_checkpoint(CONFIG)
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"model_type 'bert'\) matches no format.*LlamaForCausalLM"):
        zoo.from_pretrained(path)
    (path / "config.json").write_text(json.dumps({**raw, "hidden_act": "softsign"}))
    with pytest.raises(CheckpointError, match="unsupported activation 'softsign'"):
        zoo.from_pretrained(path)


def test_zoo_format_round_trip(tmp_path):
    model = zoo.build("gpt-tiny", seed=3)
    zoo.save_pretrained(model, tmp_path / "ckpt")
    loaded = zoo.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    ids = torch.randint(0, 256, (2, 11))
    assert torch.equal(loaded(ids), model(ids))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_zoo_format_with_unknown_family(tmp_path):
    zoo.save_pretrained(zoo.build("llama-tiny"), tmp_path / "ckpt")
    raw = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**raw, "zoo_family": "llamma"}))
    with pytest.raises(CheckpointError, match="unknown zoo_family 'llamma'"):
        zoo.from_pretrained(tmp_path / "ckpt")


def test_failed_write_leaves_previous_directory_intact(tmp_path):
    target = tmp_path / "out"
    zoo.save_pretrained(zoo.build("llama-tiny", seed=1), target)
    before = (target / "model.safetensors").read_bytes()

    def failing_write(tmp):
        (tmp / "partial").write_text("half")
        raise RuntimeError("disk full")

    (target / "tokenizer.json").write_text("user's")  # carried over on a successful replace, kept on failure
    with pytest.raises(RuntimeError, match="disk full"):
        write_directory_atomically(target, failing_write, overwrite=True)
    assert (target / "tokenizer.json").read_text() == "user's"
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind
