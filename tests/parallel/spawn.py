"""Run a function on 2 gloo ranks (torch.multiprocessing spawn, a free port): one spawn per test file keeps
the folder fast on 2 cores. A failing assertion on any rank fails the test with that rank's traceback; a rank
that passes leaves like a `torchrun -m zoo` rank (runtime.distributed.exit_rank)."""

import os

import torch.multiprocessing as mp

WORLD = 2


def _entry(rank: int, port: int, fn, args):
    import torch
    import torch.distributed as dist

    from runtime.distributed import exit_rank

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    fn(rank, *args)
    exit_rank(0)


def run_on_two_ranks(fn, *args) -> None:
    from runtime.distributed import free_port

    mp.spawn(_entry, args=(free_port(), fn, args), nprocs=WORLD, join=True)
