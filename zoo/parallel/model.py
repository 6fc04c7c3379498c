"""TensorParallelModel: a model sharded for one rank (zoo.parallel.plan), with the generation entry points
the engine calls (prefill, decode_step, init_state, ...) and logits all-gathered over the vocabulary, so
every rank holds the same full logits and picks the same next token."""

import torch
import torch.distributed as dist
from torch import nn

from zoo.parallel.comm import TensorParallelGroup
from zoo.parallel.plan import shard_modules
from zoo.parallel.sequence import sequence_parallel_prefill, supports_sequence_parallel


class TensorParallelModel(nn.Module):
    def __init__(self, module: nn.Module, tp: TensorParallelGroup, sequence_parallel: bool = True):
        super().__init__()
        self.module, self.tp = module, tp
        self.config = module.config
        self.encoder_decoder = getattr(module, "encoder_decoder", False)
        self.compressed_cache = getattr(module, "compressed_cache", False)
        self.takes_media = getattr(module, "takes_media", False)
        self.sequence_parallel = sequence_parallel and supports_sequence_parallel(module)

    def gather_logits(self, local: torch.Tensor) -> torch.Tensor:
        return self.tp.all_gather(local, dim=-1)[..., : self.config.vocab_size]

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.gather_logits(self.module(*args, **kwargs))

    def uses_sequence_parallel(self, prompt_length: int) -> bool:
        """Sequence parallelism splits the prompt evenly: on when p > 1 divides the padded prompt length."""
        return self.sequence_parallel and self.tp.size > 1 and prompt_length % self.tp.size == 0

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict):
        if self.uses_sequence_parallel(input_ids.shape[1]):
            logits, state = sequence_parallel_prefill(self.module, self.tp, input_ids, lengths, state)
        else:
            logits, state = self.module.prefill(input_ids, lengths, state)
        return self.gather_logits(logits), state

    def encode_media(self, pixel_values, caption_ids, caption_lengths, state: dict) -> dict:
        """Re-ViLM's per-request context: this rank's heads of the media and caption keys and values."""
        return self.module.encode_media(pixel_values, caption_ids, caption_lengths, state)

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Re-ViLM's retrieval embedding (its ViT is replicated, so every rank computes the same one)."""
        return self.module.embed_image(pixel_values)

    def embedding_model_id(self) -> str:
        return self.module.embedding_model_id()

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict):
        logits, state = self.module.decode_step(tokens, positions, state)
        return self.gather_logits(logits), state

    def state_spec(self):
        return self.module.state_spec()

    def init_state(self, batch: int, max_len: int, dtype=None, device=None) -> dict:
        return self.module.init_state(batch, max_len, dtype, device)

    def cache_slots(self, state: dict) -> tuple[int, int]:
        """The fullest head over every rank's heads, so that all ranks size their compressed caches alike."""
        used, capacity = self.module.cache_slots(state)
        most = self.tp.all_reduce(torch.tensor([used], device=state["k0"].device), op=dist.ReduceOp.MAX)
        return int(most), capacity

    def resize_cache(self, state: dict, capacity: int) -> dict:
        return self.module.resize_cache(state, capacity)

    def state_summary(self, state: dict, cached_tokens: torch.Tensor) -> dict:
        """The module's summary of this rank's state (DMC: the compression of this rank's heads)."""
        return self.module.state_summary(state, cached_tokens) if hasattr(self.module, "state_summary") else {}


def tensor_parallel(model: nn.Module, tp: TensorParallelGroup, sequence_parallel: bool = True) -> TensorParallelModel:
    """Shard `model` (a full model, the same weights on every rank) in place for this rank of `tp` and wrap it."""
    return TensorParallelModel(shard_modules(model.eval(), tp), tp, sequence_parallel)
