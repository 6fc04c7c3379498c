"""`--tp` on the command line: under torchrun (2 gloo processes, only rank 0 prints) for `generate` on a
Megatron checkpoint and for `bench`, and its one-line errors without torchrun or with another backend."""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from torch.multiprocessing import ProcessExitedException

from runtime.distributed import TORCHRUN_VARIABLES, free_port
from tests.parallel import megatron_shards
from tests.parallel.spawn import run_on_two_ranks
from tests.parallel.test_megatron import source_model
from zoo.cli import main

PROMPTS = ["--prompt-ids", "5,17,99,3,42", "--prompt-ids", "7,1,250"]


@pytest.fixture
def no_launcher(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
    ]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, "-m", "zoo", *args], capture_output=True, text=True, env=env, timeout=240)


def test_generate_and_bench_under_torchrun(tmp_path, no_launcher):
    model, extra = source_model("llama")
    checkpoint = tmp_path / "megatron"
    checkpoint.mkdir()
    megatron_shards.write_checkpoint(checkpoint, model, tp=2, **extra)
    single = CliRunner().invoke(main, ["generate", str(checkpoint), *PROMPTS, "--max-new-tokens", "5", "--json"])
    assert single.exit_code == 0, single.output
    sharded = torchrun("generate", str(checkpoint), "--tp", "2", *PROMPTS, "--max-new-tokens", "5", "--json")
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    lines = sharded.stdout.strip().splitlines()
    assert len(lines) == 1  # rank 0 only
    assert json.loads(lines[0])["tokens"] == json.loads(single.output)["tokens"]

    report = tmp_path / "tp.json"
    bench = torchrun(
        "bench", "gpt-tiny", "--tp", "2", "--batch", "2", "--prompt-len", "8", "--gen-len", "3", "--json", str(report)
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert bench.stdout.count("zoo bench gpt-tiny --tp 2") == 1
    (point,) = json.loads(report.read_text())["tensor_parallel"]
    assert point["tp"] == 2 and point["weight_bytes_per_rank"] < point["weight_bytes_unsharded"]
    per_step, analytic = point["decode_collectives_per_step"], point["decode_bytes_per_step_analytic"]
    assert per_step["all_reduce"]["calls"] == 2 * 2 + 1  # two per layer and the embedding
    assert per_step["all_reduce"]["bytes"] == analytic["all_reduce"] == 5 * 2 * 64 * 4
    assert per_step["all_gather"]["bytes"] == analytic["all_gather"] == 2 * 256 * 4
    assert per_step["reduce_scatter"]["calls"] == 0  # sequence parallelism is for prefill only
    assert point["prefill_collectives"]["reduce_scatter"]["calls"] == 2 * 2 + 1  # prompt of 8: even


def test_a_failing_request_under_torchrun_exits_1_with_one_error_line(no_launcher):
    too_long = ",".join(["5"] * 300)  # llama-tiny's context is 256
    failed = torchrun("generate", "llama-tiny", "--tp", "2", "--prompt-ids", too_long)
    assert failed.returncode == 1
    assert failed.stderr.count("prompt 0 has 300 tokens, longer than the model's context of 256") == 1
    assert "terminate called" not in failed.stderr


@pytest.mark.parametrize(
    ("status", "code", "stderr"), [(None, 0, ""), (3, 3, ""), ("no ranks left", 1, "no ranks left\n")]
)
def test_exit_rank_leaves_with_the_status_of_system_exit(status, code, stderr):
    program = f"from runtime.distributed import exit_rank; print('kept', end=''); exit_rank({status!r}); print('after')"
    left = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert (left.returncode, left.stdout, left.stderr) == (code, "kept", stderr)  # stdout flushed, nothing after


def fail_on_rank_0_while_rank_1_waits(rank: int) -> None:
    import time

    import torch.distributed as dist

    import runtime.distributed

    if rank == 1:
        dist.recv(torch.zeros(1), src=0)  # a collective rank 0 never joins
    runtime.distributed.FAILED_RANK_WAIT_S = 1
    start = time.monotonic()
    runtime.distributed.exit_rank(1)
    raise AssertionError(f"exit_rank returned after {time.monotonic() - start:.1f} s")


def test_a_rank_failing_alone_leaves_after_the_wait():
    with pytest.raises(ProcessExitedException) as failed:
        run_on_two_ranks(fail_on_rank_0_while_rank_1_waits)
    assert (failed.value.error_index, failed.value.exit_code) == (0, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "llama-tiny", "--tp", "2", "--prompt-ids", "1"], "--tp 2 needs one process per rank"),
        (
            ["generate", "llama-tiny", "--tp", "2", "--backend", "compiled", "--prompt-ids", "1"],
            "--tp runs on the torch backend (eager collectives); not on compiled",
        ),
        (["bench", "llama-tiny", "--tp", "2"], "--tp 2 needs one process per rank"),
        (["reshard", "--from", "nowhere", "--tp", "2", "-o", "out"], "is not a Megatron checkpoint"),
    ],
)
def test_tp_errors_are_one_line(args, message, no_launcher, tmp_path):
    if args[0] == "reshard":
        args = [*args[:2], str(tmp_path), *args[3:6], str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert message in result.output and result.output.count("\n") == 1


def test_bench_tp_refuses_other_runners(no_launcher):
    result = CliRunner().invoke(main, ["bench", "llama-tiny", "--tp", "2", "--compare", "hf"])
    assert result.exit_code == 2 and "--tp measures the torch backend" in result.output


def test_tp_options_in_help():
    for command in (["generate", "--help"], ["bench", "--help"], ["reshard", "--help"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0 and "--tp" in result.output
