"""Tensor parallelism for inference on torch.distributed (docs/parallel.md): Megatron's column-, row- and
vocab-parallel layers made from the zoo's modules, a sharding plan for every family, sequence parallelism
for prefill, collective accounting, and Megatron tensor-parallel checkpoints (zoo.parallel.megatron)."""

from zoo.parallel.comm import CollectiveCounter, TensorParallelGroup
from zoo.parallel.layers import ShardingError
from zoo.parallel.model import TensorParallelModel, tensor_parallel

__all__ = ["CollectiveCounter", "ShardingError", "TensorParallelGroup", "TensorParallelModel", "tensor_parallel"]
