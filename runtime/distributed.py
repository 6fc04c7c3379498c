"""Process groups for tensor parallelism from torchrun's environment (docs/parallel.md).

`torchrun --nproc-per-node P -m zoo generate NAME --tp P` starts P processes with RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address in their environment; multi-node runs (--nnodes, --rdzv-endpoint)
set the same variables, so nothing here changes. The backend is NCCL when CUDA is available (each process
on GPU LOCAL_RANK), gloo on CPU. The world is laid out as a device mesh ("replica", "tp"): with
world = P x R, R replicas of a degree-P group (every replica runs the same request).
"""

import atexit
import os
import sys
from typing import NoReturn

import torch

from zoo.errors import ZooError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_world_size() -> int | None:
    """WORLD_SIZE when this process was started by torchrun (or an equivalent launcher), else None."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    return int(os.environ["WORLD_SIZE"])


def check_degree(tp: int) -> int:
    """The world size for `tp` ranks, or a one-line error saying how to launch."""
    if tp < 1:
        raise ZooError(f"--tp must be >= 1, got {tp}")
    world = launched_world_size()
    if world is None:
        if tp > 1:
            raise ZooError(
                f"--tp {tp} needs one process per rank: launch with `torchrun --nproc-per-node {tp} -m zoo ...`"
            )
        return 1
    if tp > world:
        raise ZooError(f"--tp {tp} exceeds the world size {world}: launch with `torchrun --nproc-per-node {tp}`")
    if world % tp:
        raise ZooError(f"the world size {world} is not a multiple of --tp {tp}")
    return world


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def init_tensor_parallel(tp: int):
    """(zoo.parallel.TensorParallelGroup of this process's degree-`tp` group, its torch device); the default
    process group is initialised from torchrun's environment if it is not yet."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from zoo.parallel import TensorParallelGroup

    world = check_degree(tp)
    kind = device_type()
    device = torch.device("cpu")
    if kind == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if launched_world_size() is None:  # --tp 1 in a plain process: a group of one
            os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        atexit.register(shutdown)  # a process exiting with a live group can abort in its threads' teardown
    mesh = init_device_mesh(kind, (world // tp, tp), mesh_dim_names=("replica", "tp"))
    return TensorParallelGroup(mesh["tp"].get_group()), device


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def print_on_main_only() -> None:
    """Send the standard output and error of every rank but global rank 0 to /dev/null: the ranks run the
    same request, so rank 0 says everything once (a rank that fails alone still shows in torchrun's exit
    summary)."""
    if not is_main_process():
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def shutdown() -> None:
    """Destroy the default process group once every rank is here: rank 0's process holds the group's
    store, so no rank may tear down while another still uses it."""
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_rank(status: int | str | None) -> NoReturn:
    """End this rank with SystemExit's `status` (None or 0: success; a string is printed and exits 1) without
    the interpreter's finalisation. Gloo's worker threads can still be releasing the last collectives'
    tensors when the main thread exits; during finalisation that release cannot take the GIL, the thread is
    ended inside a destructor and the process aborts (terminate called without an active exception).

    A successful rank shuts the group down first (`shutdown`). A failing one waits up to
    FAILED_RANK_WAIT_S for the others (`wait_for_failed_ranks`): every rank usually fails alike (a bad
    request), and a rank that left first would have the launcher stop rank 0 before it printed the error."""
    if isinstance(status, str):
        print(status, file=sys.stderr)
        status = 1
    code = status or 0
    sys.stdout.flush()
    sys.stderr.flush()
    if code == 0:
        shutdown()
    else:
        wait_for_failed_ranks()
    os._exit(code)


FAILED_RANK_WAIT_S = 30


def wait_for_failed_ranks() -> None:
    """A barrier that gives up after FAILED_RANK_WAIT_S (a rank that failed alone: the others are inside a
    collective and never come). Gloo has such a barrier (monitored_barrier); with NCCL a failing rank leaves
    at once."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1 or dist.get_backend() != "gloo":
        return
    try:
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=FAILED_RANK_WAIT_S))
    except RuntimeError:
        pass
