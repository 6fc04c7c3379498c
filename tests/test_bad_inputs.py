"""Bad input at the command line: one line "Error: ..." and exit 1 (usage errors: exit 2), no traceback,
and no file outside the output path changes; existing files a user owns survive every write."""

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from zoo.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256), and every directory (-> 'dir')."""
    tree = {}
    for item in sorted(root.rglob("*")):
        key = str(item.relative_to(root))
        tree[key] = "dir" if item.is_dir() else hashlib.sha256(item.read_bytes()).hexdigest()
    return tree


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current directory holding a user's files, which no failing command may touch."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.csv").write_text("a,b\n1,2\n")
    return tmp_path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(result, *fragments: str, exit_code: int = 1) -> str:
    """The command failed cleanly: exit code, no traceback, and (exit 1) exactly one line of output."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert "Traceback" not in result.output
    if exit_code == 1:
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.startswith("Error: ")
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output


# --- writing directories: nothing of the user's is deleted -------------------------------------------


@pytest.mark.parametrize("command", ["retrofit-dmc", "upcycle"])
def test_out_into_a_directory_of_user_files_is_refused(workdir, command):
    before = snapshot(workdir)
    extra = ["--experts", 4, "--top-k", 2] if command == "upcycle" else []
    assert_error(cli(command, "--from", "llama-tiny", "--out", ".", *extra), "is not empty", "not a zoo checkpoint")
    assert_error(cli(command, "--from", "llama-tiny", "--out", "data", *extra), "is not empty")
    assert snapshot(workdir) == before


def test_an_hf_checkpoint_is_not_a_zoo_checkpoint(workdir):
    hf_dir = workdir / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (hf_dir / "model.safetensors").write_bytes(b"weights of the user")
    before = snapshot(workdir)
    out = cli("retrofit-dmc", "--from", "llama-tiny", "--out", hf_dir, "--overwrite")
    assert_error(out, "not a zoo checkpoint")
    assert snapshot(workdir) == before


def test_existing_zoo_checkpoint_needs_overwrite_and_keeps_other_files(workdir):
    assert cli("retrofit-dmc", "--from", "llama-tiny", "--out", "dmc").exit_code == 0
    (workdir / "dmc" / "tokenizer.json").write_text("{}")  # a file the user added
    first = (workdir / "dmc" / "model.safetensors").read_bytes()
    before = snapshot(workdir)
    assert_error(cli("retrofit-dmc", "--from", "llama-tiny", "--out", "dmc", "--seed", 1), "--overwrite")
    assert snapshot(workdir) == before
    result = cli("retrofit-dmc", "--from", "llama-tiny", "--out", "dmc", "--seed", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (workdir / "dmc" / "tokenizer.json").read_text() == "{}"
    assert (workdir / "dmc" / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in workdir.iterdir()) == ["data", "dmc", "notes.txt"]  # no temporary left


def test_out_that_is_a_file_or_unwritable(workdir):
    before = snapshot(workdir)
    out = cli("retrofit-dmc", "--from", "llama-tiny", "--out", "notes.txt")
    assert_error(out, "'notes.txt' is a file", exit_code=2)  # click's own path check: a usage error
    assert_error(cli("upcycle", "--from", "llama-tiny", "--experts", 4, "--top-k", 2, "--out", "/proc/x"))
    assert_error(cli("retrofit-dmc", "--from", "llama-tiny", "--out", "/proc/x/y"), "no such directory")
    assert snapshot(workdir) == before


def test_written_checkpoints_have_normal_permissions(workdir):
    old = os.umask(0o022)
    try:
        zoo.save_pretrained(zoo.build("llama-tiny"), workdir / "ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((workdir / "ckpt").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (workdir / "ckpt").iterdir()} == {0o644}


# --- bench outputs are checked before the benchmark runs ---------------------------------------------


@pytest.fixture
def no_benchmark(monkeypatch):
    import benchmarks.harness

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran before its outputs were checked")

    monkeypatch.setattr(benchmarks.harness, "run_bench", must_not_run)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--json", "/proc/x/b.json"], "no such directory /proc/x"),
        (["--json", "/proc/b.json"], "cannot write /proc/b.json"),
        (["--plot", "missing/plot.png"], "no such directory"),
        (["--json", "notes.txt"], "not a zoo bench JSON report"),
        (["--plot", "notes.txt"], "not a zoo bench plot"),
    ],
)
def test_bench_outputs_checked_first(workdir, no_benchmark, args, message):
    before = snapshot(workdir)
    assert_error(cli("bench", "llama-tiny", *args), message)
    assert_error(cli("bench", "llama-tiny", "--json", "data"), "'data' is a directory", exit_code=2)
    assert snapshot(workdir) == before


# --- sampling and request options --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--temperature", "nan"], "temperature must be a finite number >= 0"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-p", "1.5", "--temperature", "0"], "top_p must be in (0, 1]"),
        (["--top-k", "0"], "top_k must be >= 1"),
        (["--top-k", "-5"], "top_k must be >= 1"),
        (["--eos-id", "256"], "EOS token ids outside the vocabulary [0, 256)"),
        (["--eos-id", "-1"], "EOS token ids outside the vocabulary"),
    ],
)
def test_sampling_options_out_of_range(args, message):
    assert_error(cli("generate", "llama-tiny", "--prompt-ids", "1,2", "--max-new-tokens", 2, *args), message)


@pytest.mark.parametrize("ids", ["1,,2", ",", ""])
def test_prompt_ids_with_empty_items_are_usage_errors(ids):
    assert_error(cli("generate", "llama-tiny", "--prompt-ids", ids), "has an empty item", exit_code=2)


# --- model and checkpoint paths ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["info"], ["generate", "--prompt-ids", "1"], ["bench"]])
def test_missing_directory_is_not_an_unknown_model(workdir, command):
    result = cli(command[0], "./no-such-dir", *command[1:])
    assert "unknown model" not in assert_error(result, "no such directory: ./no-such-dir")


def test_a_file_is_not_a_checkpoint(workdir):
    assert_error(cli("info", "notes.txt"), "notes.txt is a file")


@pytest.mark.parametrize("content", ["[1, 2]", "null", '"llama"', "{not json"])
def test_config_json_that_is_not_an_object(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    message = "not valid JSON" if content.startswith("{") else "not an object"
    assert_error(cli("info", tmp_path), "config.json", message)
    assert_error(cli("generate", tmp_path, "--prompt-ids", "1"), message)


def test_corrupt_tokenizer(tmp_path):
    zoo.save_pretrained(zoo.build("llama-tiny"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text('{"model": {"type": "nonsense"}')
    assert_error(cli("generate", tmp_path / "ckpt", "--prompt", "hi"), "tokenizer.json is not a valid tokenizers file")


class NotATensor:
    pass


def test_pickled_objects_are_refused_for_safety(tmp_path):
    from zoo.checkpoint import load_weights_only

    torch.save({"w": torch.ones(2), "payload": NotATensor()}, tmp_path / "model.bin")
    with pytest.raises(zoo.CheckpointError) as error:
        load_weights_only(tmp_path / "model.bin")
    message = str(error.value)
    assert "holds Python objects" in message and "refused for safety" in message
    assert "weights_only=False" not in message
    (tmp_path / "truncated.bin").write_bytes((tmp_path / "model.bin").read_bytes()[:40])
    with pytest.raises(zoo.CheckpointError, match="cannot read .*truncated.bin"):
        load_weights_only(tmp_path / "truncated.bin")


@pytest.mark.parametrize("layout", ["megatron", "mamba_ssm"])
def test_pickled_checkpoints_with_objects_are_one_line_refusals(tmp_path, layout):
    if layout == "megatron":
        (tmp_path / "mp_rank_00").mkdir()
        torch.save({"model": {}, "args": NotATensor()}, tmp_path / "mp_rank_00" / "model_optim_rng.pt")
    else:
        (tmp_path / "config.json").write_text(
            json.dumps({"d_model": 64, "n_layer": 2, "vocab_size": 256, "ssm_cfg": {"layer": "Mamba2"}})
        )
        torch.save({"payload": NotATensor()}, tmp_path / "pytorch_model.bin")
    output = assert_error(cli("generate", tmp_path, "--prompt-ids", "1"), "holds Python objects", "refused for safety")
    assert "weights_only=False" not in output
