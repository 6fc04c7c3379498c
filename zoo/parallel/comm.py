"""The collectives of tensor parallelism (docs/algorithms.md §8), on a torch.distributed process group, with
the bytes every call moves counted (the benchmark's collective accounting).

Counted bytes are each call's payload, the size of the full tensor the collective produces or reduces:
an all-reduce of N bytes counts N, an all-gather that yields N bytes counts N, a reduce-scatter of an N-byte
input counts N. A ring implementation puts 2(p-1)/p * N (all-reduce) or (p-1)/p * N (the others) on each
rank's wire; `wire_bytes` gives those.
"""

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from zoo.errors import ZooError

KINDS = ("all_reduce", "all_gather", "reduce_scatter")


@dataclass
class CollectiveCounter:
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, kind: str, tensor: torch.Tensor) -> None:
        self.calls[kind] += 1
        self.bytes[kind] += tensor.numel() * tensor.element_size()

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def snapshot(self) -> dict:
        return {kind: {"calls": self.calls[kind], "bytes": self.bytes[kind]} for kind in KINDS}

    def wire_bytes(self, world: int) -> int:
        """Bytes each rank sends with ring collectives for the counted payloads."""
        ring = (world - 1) / world
        return int(
            2 * ring * self.bytes["all_reduce"] + ring * (self.bytes["all_gather"] + self.bytes["reduce_scatter"])
        )


class TensorParallelGroup:
    """Rank, size and counted collectives of one tensor-parallel group (the default group when None).

    `sequence_parallel` is set for the duration of a sequence-parallel prefill (zoo/parallel/sequence.py):
    row-parallel outputs then reduce-scatter along the sequence (dim 1) instead of all-reducing."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        if not dist.is_initialized():
            raise ZooError(
                "tensor parallelism needs an initialised torch.distributed process group (launch with torchrun)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.counter = CollectiveCounter()
        self.sequence_parallel = False

    def all_reduce(self, x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.size == 1:
            return x
        x = x.contiguous()
        self.counter.add("all_reduce", x)
        dist.all_reduce(x, op=op, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The ranks' x concatenated along `dim`, in rank order."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        gathered = torch.cat(parts, dim=dim)
        self.counter.add("all_gather", gathered)
        return gathered

    def reduce_scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The sum over ranks of x, this rank's 1/p chunk along `dim` (x.shape[dim] % p == 0)."""
        if self.size == 1:
            return x
        self.counter.add("reduce_scatter", x)
        chunks = [c.contiguous() for c in x.chunk(self.size, dim=dim)]
        out = torch.empty_like(chunks[self.rank])
        dist.reduce_scatter(out, chunks, group=self.group)
        return out

    def reduce_output(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum of a row-parallel layer's partial outputs: all-reduce, or reduce-scatter along the sequence
        under sequence parallelism."""
        if self.sequence_parallel:
            return self.reduce_scatter(partial, dim=1)
        return self.all_reduce(partial)
