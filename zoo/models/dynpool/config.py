"""Dynamic-pooling transformer config (Nawrot et al. 2023, docs/algorithms.md §6).

Three stacks of post-LN Transformer-XL layers: `n_pre` over the tokens, `n_short` over the pooled
segments, `n_post` over the tokens again. Boundaries come from a rule ("fixed": every `fixed_stride`
tokens; "whitespace": tokens in `boundary_token_ids`) or from a learned predictor ("predictor": Gumbel-sigmoid
in training with a binomial prior of `prior`, p > 0.5 at inference).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from zoo.config import DTYPE_BYTES, ModelConfig

BOUNDARY_MODES = ("fixed", "whitespace", "predictor")


@dataclass
class DynPoolConfig(ModelConfig):
    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    n_pre: int = 2
    n_short: int = 8
    n_post: int = 2
    head_dim: int | None = None  # None: d_model // n_heads
    boundaries: str = "predictor"  # "fixed" | "whitespace" | "predictor"
    fixed_stride: int = 2  # "fixed": b_t = [t mod fixed_stride == 0]
    boundary_token_ids: tuple[int, ...] = (32,)  # "whitespace": the byte-level space
    temperature: float = 0.5  # "predictor": RelaxedBernoulli temperature in training
    prior: float = 0.2  # "predictor": binomial prior on the fraction of boundaries
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    init_std: float = 0.02

    family: ClassVar[str] = "dynpool"

    def __post_init__(self):
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even (sinusoidal relative positions)")
        if self.boundaries not in BOUNDARY_MODES:
            raise ValueError(f"unknown boundaries {self.boundaries!r}; expected one of {', '.join(BOUNDARY_MODES)}")
        if self.fixed_stride < 1:
            raise ValueError(f"fixed_stride must be >= 1, got {self.fixed_stride}")
        self.boundary_token_ids = tuple(self.boundary_token_ids)
        if self.boundaries == "whitespace" and not self.boundary_token_ids:
            raise ValueError("whitespace boundaries need at least one id in boundary_token_ids")
        if min(self.n_pre, self.n_short, self.n_post) < 0:
            raise ValueError("layer counts n_pre, n_short, n_post must be >= 0")

    @property
    def n_layers(self) -> int:
        return self.n_pre + self.n_short + self.n_post

    def max_segments(self, length):
        """The segment slots that size the shortened sequence of `length` tokens without looking at the data:
        every token may close a segment, except with fixed boundaries, which close ceil(length / stride).
        That count gets one spare slot, so that the size is >= 2 for every length >= 2: torch.export assumes
        that of a dynamic length, and would otherwise specialise the graph to lengths over the stride."""
        if self.boundaries == "fixed" and self.fixed_stride > 1:
            return (length + self.fixed_stride - 1) // self.fixed_stride + 1
        return length

    def num_params(self) -> int:
        d, V, F, HD = self.d_model, self.vocab_size, self.d_ff, self.n_heads * self.head_dim
        attention = d * 3 * HD + 3 * HD + d * HD + HD + HD * d + d  # qkv, relative-position and output projections
        mlp = d * F + F + F * d + d
        layer = attention + mlp + 4 * d  # and two LayerNorms
        predictor = d * F + F + F + 1 if self.boundaries == "predictor" else 0
        model_level = 2 * HD + d + 2 * d  # u and v biases, null group, the LayerNorm after pooling
        return self.n_layers * layer + V * d + V * d + V + predictor + model_level

    def lookup_params(self) -> int:
        return self.vocab_size * self.d_model

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        """Keys and values of every layer; the shortened stack's cache is sized by the bound of one segment
        per token (its slots past the segment count stay unused)."""
        return 2 * self.n_layers * self.n_heads * self.head_dim * DTYPE_BYTES[dtype]

    def state_bytes_per_sequence(self, dtype: torch.dtype = torch.float16) -> int:
        null_kv = 2 * self.n_short * self.n_heads * self.head_dim * DTYPE_BYTES[dtype]
        pooling = self.d_model * 4 + 8 + 8 + self.d_model * DTYPE_BYTES[dtype]  # open sum, counts, latest
        return null_kv + pooling

    def state_bytes(self, batch: int, context: float, dtype: torch.dtype = torch.float16) -> float:
        """Per-sequence state plus the relative-position tables, which the whole batch shares."""
        tables = context * self.n_layers * self.n_heads * self.head_dim * DTYPE_BYTES[dtype]
        return super().state_bytes(batch, context, dtype) + tables

    def mixer_flops_per_token(self, context: float) -> float:
        # q.k, (q+v).R and p.v over every slot of every layer's cache
        return 6 * context * self.n_heads * self.head_dim * self.n_layers


def _small(**kwargs) -> DynPoolConfig:
    """The paper's text8 model: d 512, 8 heads x 64, d_ff 2048, [2, (8,), 2] layers, byte vocabulary."""
    return DynPoolConfig(vocab_size=256, d_model=512, n_heads=8, d_ff=2048, **kwargs)


SIZES = {
    # tests: 1 + 2 + 1 layers, learned boundaries; tests switch `boundaries` with dataclasses.replace
    "dynpool-tiny": DynPoolConfig(
        vocab_size=256, d_model=64, n_heads=4, d_ff=128, n_pre=1, n_short=2, n_post=1, max_seq_len=256
    ),
    "dynpool-small": _small(boundaries="predictor"),  # Gumbel-sigmoid predictor, prior 0.2
    "dynpool-small-fixed": _small(boundaries="fixed", fixed_stride=2),
    "dynpool-small-whitespace": _small(boundaries="whitespace", boundary_token_ids=(32,)),
}
