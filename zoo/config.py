"""What every family's config provides to the registry, the CLI, the runtime and the benchmarks."""

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch

DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@dataclass
class ModelConfig:
    """Base of the family configs (dataclasses with a table of named sizes beside them)."""

    family: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**values)

    def num_params(self) -> int:
        """Parameter count from the config alone (no weights are built)."""
        raise NotImplementedError

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        """Decode-state bytes that each cached token adds (attention KV caches)."""
        return 0

    def state_bytes_per_sequence(self, dtype: torch.dtype = torch.float16) -> int:
        """Decode-state bytes per sequence that do not grow with its length (recurrent states)."""
        return 0

    def state_bytes(self, batch: int, context: float, dtype: torch.dtype = torch.float16) -> float:
        return batch * (context * self.cache_bytes_per_token(dtype) + self.state_bytes_per_sequence(dtype))

    def lookup_params(self) -> int:
        """Parameters that a decode step indexes one row of instead of reading whole (an untied input
        embedding, learned positions)."""
        return 0 if self.tie_embeddings else self.vocab_size * self.d_model

    def mixer_flops_per_token(self, context: float) -> float:
        """Flops per token per step beyond 2 per parameter (attention over the cache, state updates)."""
        return 0.0
