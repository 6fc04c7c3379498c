"""Megatron's parallel layers for inference (docs/algorithms.md §8), built from the zoo's own modules by
slicing their weights in place:
- column-parallel: an nn.Linear keeps its rank's output rows (`shard_output`); its input is replicated and
  its output stays local, so it needs no collective and stays a plain nn.Linear;
- row-parallel (`RowParallelLinear`): the rank's input columns, one all-reduce of the partial outputs,
  the bias added once, after the reduce;
- vocab-parallel embedding (`VocabParallelEmbedding`): the rank's range of the (padded) vocabulary, rows
  outside it looked up as zeros, one all-reduce;
- `ReduceOutput`: a module whose output is a partial sum (an MoE layer with experts sharded inside), then
  one all-reduce.

A weight's output layout is a list of segment sizes (e.g. Mamba-2's in_proj [z | x | B | C | dt]); every
segment is cut into p equal chunks and a rank keeps its chunk of each, in order.
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ZooError
from zoo.parallel.comm import TensorParallelGroup


class ShardingError(ZooError):
    """A model that cannot be sharded at the requested tensor-parallel degree."""


def require_divisible(count: int, size: int, what: str) -> None:
    if count % size:
        raise ShardingError(f"{what}={count} is not divisible by the tensor-parallel degree {size}")


def local_indices(segments: list[int], rank: int, size: int) -> torch.Tensor:
    """Indices of this rank's chunk of every segment of a concatenated axis."""
    index, offset = [], 0
    for length in segments:
        chunk = length // size
        index.append(torch.arange(offset + rank * chunk, offset + (rank + 1) * chunk))
        offset += length
    return torch.cat(index)


def take(tensor: torch.Tensor, dim: int, segments: list[int], rank: int, size: int) -> torch.Tensor:
    if sum(segments) != tensor.shape[dim]:
        raise ShardingError(f"a layout of {sum(segments)} does not match a tensor of {tensor.shape[dim]} on axis {dim}")
    return tensor.index_select(dim, local_indices(segments, rank, size).to(tensor.device)).contiguous()


def shard_parameter(module: nn.Module, name: str, dim: int, segments: list[int], tp: TensorParallelGroup) -> None:
    """Replace module.<name> by this rank's chunks along `dim`."""
    param = getattr(module, name)
    setattr(module, name, nn.Parameter(take(param.data, dim, segments, tp.rank, tp.size), requires_grad=False))


def shard_output(linear: nn.Linear, tp: TensorParallelGroup, segments: list[int] | None = None) -> None:
    """Column-parallel: keep this rank's output rows (and bias) of `linear`, in place."""
    segments = segments or [linear.out_features]
    shard_parameter(linear, "weight", 0, segments, tp)
    if linear.bias is not None:
        shard_parameter(linear, "bias", 0, segments, tp)
    linear.out_features = linear.weight.shape[0]


def shard_input(linear: nn.Linear, tp: TensorParallelGroup, segments: list[int] | None = None) -> None:
    """This rank's input columns of `linear`, in place, without a collective (its caller reduces)."""
    shard_parameter(linear, "weight", 1, segments or [linear.in_features], tp)
    linear.in_features = linear.weight.shape[1]


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_r A_r^T) + b: an nn.Linear's input columns of this rank (same parameter names)."""

    def __init__(self, linear: nn.Linear, tp: TensorParallelGroup, segments: list[int] | None = None):
        super().__init__()
        shard_input(linear, tp, segments)
        self.tp = tp
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.reduce_output(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


class ReduceOutput(nn.Module):
    """module(x) summed over ranks: for a module whose output is a partial sum."""

    def __init__(self, module: nn.Module, tp: TensorParallelGroup):
        super().__init__()
        self.module, self.tp = module, tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.reduce_output(self.module(x))


def padded_vocab(vocab: int, size: int) -> int:
    """The vocabulary rounded up to a multiple of the degree (Megatron pads it the same way)."""
    return -(-vocab // size) * size


def vocab_shard(weight: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """This rank's rows of a (V, ...) vocabulary matrix padded with zero rows to padded_vocab(V)."""
    vocab = weight.shape[0]
    padded = padded_vocab(vocab, tp.size)
    if padded != vocab:
        weight = torch.cat([weight, weight.new_zeros(padded - vocab, *weight.shape[1:])])
    return weight.chunk(tp.size)[tp.rank].contiguous()


class VocabParallelEmbedding(nn.Module):
    """Each rank looks up its vocabulary range; ids outside it give zeros; one all-reduce sums the ranks."""

    def __init__(self, embedding: nn.Embedding, tp: TensorParallelGroup):
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(vocab_shard(embedding.weight.data, tp), requires_grad=False)
        self.vocab_start = tp.rank * self.weight.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.vocab_start
        inside = (local >= 0) & (local < self.weight.shape[0])
        rows = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)
        return self.tp.reduce_output(rows * inside[..., None].to(rows.dtype))


def shard_vocab_head(linear: nn.Linear, tp: TensorParallelGroup) -> None:
    """A column-parallel LM head over the padded vocabulary, in place (its logits are all-gathered)."""
    linear.weight = nn.Parameter(vocab_shard(linear.weight.data, tp), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(vocab_shard(linear.bias.data, tp), requires_grad=False)
    linear.out_features = linear.weight.shape[0]
