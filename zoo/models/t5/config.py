"""T5 v1.1 / nanoT5 family: encoder-decoder, GEGLU, RMSNorm, bucketed relative position bias, untied lm_head."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from zoo.config import DTYPE_BYTES, ModelConfig


@dataclass
class T5Config(ModelConfig):
    vocab_size: int
    d_model: int
    n_layers: int  # encoder layers
    n_heads: int
    d_ff: int
    head_dim: int = 64  # HF d_kv; n_heads * head_dim need not equal d_model
    n_decoder_layers: int | None = None  # None: n_layers
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm_eps: float = 1e-6
    activation: str = "gelu_tanh"  # the GEGLU gate's activation (HF "gated-gelu" is gelu_new, tanh approx)
    # longest encoder input, and most decoder tokens, a request may hold; relative positions do not end
    # here (the bias clips at relative_max_distance), it is the length the released models were trained at
    max_seq_len: int = 512
    init_factor: float = 1.0
    decoder_start_token_id: int = 0  # the pad id, as HF T5

    family: ClassVar[str] = "t5"
    tie_embeddings: ClassVar[bool] = False  # v1.1: a separate lm_head, decoder output not rescaled

    def __post_init__(self):
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers

    def num_params(self) -> int:
        d, inner = self.d_model, self.n_heads * self.head_dim
        attention = 4 * d * inner
        mlp = 3 * d * self.d_ff
        encoder_layer = attention + mlp + 2 * d
        decoder_layer = 2 * attention + mlp + 3 * d
        relative_bias = self.relative_buckets * self.n_heads  # one table per stack
        stacks = self.n_layers * encoder_layer + self.n_decoder_layers * decoder_layer + 2 * (relative_bias + d)
        return stacks + 2 * self.vocab_size * d  # shared embedding and lm_head

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        """Bytes one cache slot holds over all decoder layers: self-attention k, v and cross-attention k, v
        (both caches share the slot axis, docs/state.md), plus the slot's byte of the encoder mask."""
        return 4 * self.n_decoder_layers * self.n_heads * self.head_dim * DTYPE_BYTES[dtype] + 1

    def lookup_params(self) -> int:
        return self.vocab_size * self.d_model  # the shared input embedding

    def mixer_flops_per_token(self, context: float) -> float:
        """q.k and p.v of a decode step over the self-attention and cross-attention caches."""
        return 2 * 4 * context * self.n_heads * self.head_dim * self.n_decoder_layers


SIZES = {
    # tests: 2 encoder and 3 decoder layers (a stack mix-up shows), head_dim * heads != d_model, and few
    # buckets with a short max distance so that short inputs reach the log-spaced and clipped buckets
    "t5-tiny": T5Config(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_decoder_layers=2,
        n_heads=4,
        head_dim=12,
        d_ff=96,
        relative_buckets=8,
        relative_max_distance=20,
    ),
    # google/t5-v1_1-* (pnawrot/nanoT5-base is t5-v1_1-base's config with dropout 0)
    "t5-v1_1-small": T5Config(vocab_size=32128, d_model=512, n_layers=8, n_heads=6, d_ff=1024),
    "t5-v1_1-base": T5Config(vocab_size=32128, d_model=768, n_layers=12, n_heads=12, d_ff=2048),
    "t5-v1_1-large": T5Config(vocab_size=32128, d_model=1024, n_layers=24, n_heads=16, d_ff=2816),
}
