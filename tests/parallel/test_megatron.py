"""Megatron-Core tensor-parallel checkpoints (2 ranks written by hand: tests/parallel/megatron_shards.py):
loaded at TP 1 (merged) and TP 2 with the logits of the model they were written from; `zoo reshard` merges
and re-shards them to the very tensors Megatron's layouts give."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from tests.parallel import megatron_shards
from tests.parallel.spawn import run_on_two_ranks
from zoo.cli import main
from zoo.models.dmc.megatron import read
from zoo.parallel import megatron

VOCAB = 256
IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 1, 250], [7, 1, 250, 33, 8, 64, 120, 9]])


def source_model(kind: str):
    """A Llama-style (SwiGLU, GQA, untied) or GPT (LayerNorm, biases, learned positions, tied) model whose
    config is the one the Megatron args describe, with the unpadded vocabulary."""
    from tests.conftest import informative_weights
    from zoo.registry import build_from_config, get_config

    base = get_config("llama-tiny" if kind == "llama" else "gpt-tiny")
    extra = {"openai_gelu": True} if kind == "gpt" else {}
    config = megatron.config_from_args(megatron_shards.args_of(base, 2, **extra))
    model = build_from_config(dataclasses.replace(config, vocab_size=VOCAB))
    return informative_weights(model, seed=2), extra


@pytest.fixture(scope="module", params=["llama", "gpt"])
def checkpoint(request, tmp_path_factory):
    model, extra = source_model(request.param)
    path = tmp_path_factory.mktemp(request.param) / "megatron"
    path.mkdir()
    megatron_shards.write_checkpoint(path, model, tp=2, **extra)
    return path, model


def test_two_rank_checkpoint_loads_merged(checkpoint):
    from zoo.registry import from_pretrained

    path, model = checkpoint
    loaded = from_pretrained(path)
    assert loaded.config.vocab_size == megatron_shards.PADDED_VOCAB
    with torch.no_grad():
        want, got = model(IDS), loaded(IDS)
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got[..., :VOCAB], want, atol=1e-5, rtol=1e-5)
    assert got[..., VOCAB:].abs().max() == 0  # the padding rows are zeros


def test_reshard_merges_and_splits_by_megatron_layouts(checkpoint, tmp_path):
    path, model = checkpoint
    runner = CliRunner()
    merged, again = tmp_path / "tp1", tmp_path / "tp2"
    result = runner.invoke(main, ["reshard", "--from", str(path), "--tp", "1", "-o", str(merged)])
    assert result.exit_code == 0, result.output
    assert len(megatron.rank_files(merged)) == 1
    result = runner.invoke(main, ["reshard", "--from", str(merged), "--tp", "2", "-o", str(again)])
    assert result.exit_code == 0, result.output
    full = megatron_shards.full_state(model)
    for rank, file in enumerate(megatron.rank_files(again)):
        checkpoint_dict = read(file)
        expected = megatron_shards.shard(full, model.config, rank, 2)
        assert checkpoint_dict["args"].tensor_model_parallel_size == 2
        assert checkpoint_dict["model"].keys() == expected.keys()
        for key, tensor in expected.items():
            torch.testing.assert_close(checkpoint_dict["model"][key], tensor, atol=0, rtol=0, msg=key)


def test_reshard_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    runner = CliRunner()
    odd = runner.invoke(main, ["reshard", "--from", str(path), "--tp", "3", "-o", str(tmp_path / "tp3")])
    assert odd.exit_code == 1 and odd.output.count("\n") == 1
    assert "attention heads=4 is not divisible by --tp 3" in odd.output
    assert not (tmp_path / "tp3").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = runner.invoke(main, ["reshard", "--from", str(path), "--tp", "1", "-o", str(foreign), "--overwrite"])
    assert refused.exit_code == 1 and "is not empty and is not a checkpoint written by zoo reshard" in refused.output
    assert (foreign / "notes.txt").read_text() == "mine"
    out = tmp_path / "ours"
    assert runner.invoke(main, ["reshard", "--from", str(path), "--tp", "1", "-o", str(out)]).exit_code == 0
    again = runner.invoke(main, ["reshard", "--from", str(path), "--tp", "2", "-o", str(out)])
    assert again.exit_code == 1 and "pass --overwrite" in again.output
    replaced = runner.invoke(main, ["reshard", "--from", str(path), "--tp", "2", "-o", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert len(megatron.rank_files(out)) == 2
    missing = tmp_path / "gap"
    (missing / "mp_rank_00").mkdir(parents=True)
    (missing / "mp_rank_02").mkdir()
    args = megatron_shards.args_of(zoo_config(), 2)
    torch.save({"model": {}, "args": args}, missing / "mp_rank_00" / "model_optim_rng.pt")
    gap = runner.invoke(main, ["info", str(missing)])
    assert gap.exit_code == 1
    assert "ranks must be mp_rank_00 .. mp_rank_01; found ['mp_rank_00', 'mp_rank_02']" in gap.output
    info = runner.invoke(main, ["info", str(path), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["vocab"] == megatron_shards.PADDED_VOCAB


def zoo_config():
    from zoo.registry import get_config

    return get_config("llama-tiny")


def load_at_tp2(rank: int, path: str) -> None:
    from zoo.parallel import TensorParallelGroup, tensor_parallel
    from zoo.registry import from_pretrained

    with torch.no_grad():
        want = from_pretrained(path)(IDS)
        got = tensor_parallel(from_pretrained(path), TensorParallelGroup())(IDS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_two_rank_checkpoint_at_tp2_matches_tp1(checkpoint):
    run_on_two_ranks(load_at_tp2, str(checkpoint[0]))
