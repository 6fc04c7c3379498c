"""Mamba-2 and Mamba-2/attention hybrid configs (docs/algorithms.md §2.1, 2.4).

A model is a stack of pre-norm residual sublayers given by a pattern string: `M` Mamba-2 mixer, `*`
self-attention (GQA, no positional encoding), `-` non-gated MLP. Pure Mamba-2 is the pattern "M" * n.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from zoo.config import DTYPE_BYTES, ModelConfig
from zoo.nn.mamba2 import SSM_STATE_DTYPE

LAYER_KINDS = {"M": "mamba", "*": "attention", "-": "mlp"}


@dataclass
class Mamba2Config(ModelConfig):
    vocab_size: int
    d_model: int
    n_layers: int
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    mamba_head_dim: int = 64
    mamba_heads: int | None = None  # None: expand * d_model / mamba_head_dim
    n_groups: int = 1
    chunk_size: int = 256
    dt_limit: tuple[float, float] | None = None  # None: no clamp of dt (mamba_ssm's (0, inf))
    proj_bias: bool = False
    conv_bias: bool = True
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    residual_in_fp32: bool = True
    max_seq_len: int = 1 << 20  # recurrent layers have no context limit; attention layers' caches do
    init_std: float = 0.02
    pattern: str | None = None  # None: "M" * n_layers
    # attention (`*`) and MLP (`-`) sublayers of hybrids
    n_heads: int = 0
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int = 0
    mlp_activation: str = "relu2"
    attention_bias: bool = False
    mlp_bias: bool = False

    family: ClassVar[str] = "mamba2"

    def __post_init__(self):
        if self.mamba_heads is None:
            self.mamba_heads = self.expand * self.d_model // self.mamba_head_dim
        if self.pattern is None:
            self.pattern = "M" * self.n_layers
        if self.dt_limit is not None:
            self.dt_limit = tuple(self.dt_limit)
        unknown = sorted(set(self.pattern) - set(LAYER_KINDS))
        if len(self.pattern) != self.n_layers or unknown:
            raise ValueError(
                f"layer pattern {self.pattern!r} must have n_layers={self.n_layers} symbols from "
                f"{''.join(LAYER_KINDS)} (M Mamba-2, * attention, - MLP); unknown: {unknown}"
            )
        if "*" in self.pattern:
            self.n_kv_heads = self.n_kv_heads or self.n_heads
            self.head_dim = self.head_dim or self.d_model // self.n_heads
        if "-" in self.pattern and self.d_ff < 1:
            raise ValueError("a pattern with MLP layers ('-') needs d_ff")

    @property
    def d_inner(self) -> int:
        return self.mamba_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    def count(self, kind: str) -> int:
        return self.pattern.count(kind)

    def num_params(self) -> int:
        d = self.d_model
        mamba = (
            d * (self.d_inner + self.conv_dim + self.mamba_heads)
            + self.conv_dim * self.d_conv
            + (self.conv_dim if self.conv_bias else 0)
            + 3 * self.mamba_heads  # dt_bias, A_log, D
            + self.d_inner  # gated norm
            + self.d_inner * d
            + ((self.d_inner + self.conv_dim + self.mamba_heads + d) if self.proj_bias else 0)
        )
        attention = mlp = 0
        if self.count("*"):
            q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            attention = 2 * d * q + 2 * d * kv + ((q + 2 * kv + d) if self.attention_bias else 0)
        if self.count("-"):
            mlp = 2 * d * self.d_ff + ((self.d_ff + d) if self.mlp_bias else 0)
        layers = self.count("M") * mamba + self.count("*") * attention + self.count("-") * mlp
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return layers + self.n_layers * d + d + embeddings  # + a pre-norm per layer and the final norm

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        return 2 * self.count("*") * (self.n_kv_heads or 0) * (self.head_dim or 0) * DTYPE_BYTES[dtype]

    def state_bytes_per_sequence(self, dtype: torch.dtype = torch.float16) -> int:
        conv = self.conv_dim * self.d_conv * DTYPE_BYTES[dtype]
        ssm = self.mamba_heads * self.mamba_head_dim * self.d_state * DTYPE_BYTES[SSM_STATE_DTYPE]
        return self.count("M") * (conv + ssm)

    def mixer_flops_per_token(self, context: float) -> float:
        attention = 4 * context * self.n_heads * (self.head_dim or 0) * self.count("*")
        ssm_step = 6 * self.mamba_heads * self.mamba_head_dim * self.d_state  # decay, input, readout
        return attention + self.count("M") * (ssm_step + 2 * self.conv_dim * self.d_conv)


@dataclass
class HybridConfig(Mamba2Config):
    tie_embeddings: bool = False
    residual_in_fp32: bool = False
    family: ClassVar[str] = "mamba2-hybrid"


# state-spaces/mamba2-* (mamba_ssm MambaConfig): vocab 50277 padded to a multiple of 16 -> 50288
_RELEASED = {"130m": (768, 24), "370m": (1024, 48), "780m": (1536, 48), "1.3b": (2048, 48), "2.7b": (2560, 64)}
MAMBA2_SIZES = {
    # tests: chunk 16 so short prompts cross chunk boundaries; 2 groups to exercise the grouped norm
    "mamba2-tiny": Mamba2Config(
        vocab_size=256, d_model=64, n_layers=2, d_state=16, mamba_head_dim=16, n_groups=2, chunk_size=16
    ),
    # CPU benchmarks: about 44M parameters, beside llama-small
    "mamba2-small": Mamba2Config(vocab_size=32000, d_model=512, n_layers=16),
    **{f"mamba2-{name}": Mamba2Config(vocab_size=50288, d_model=d, n_layers=n) for name, (d, n) in _RELEASED.items()},
}

# Mamba-2-Hybrid 8B (Waleffe et al. 2024): Megatron --hybrid-layer-pattern, 24 M + 4 * + 28 - (docs/algorithms.md §2.4)
HYBRID_8B_PATTERN = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
HYBRID_SIZES = {
    "mamba2-hybrid-tiny": HybridConfig(
        vocab_size=256,
        d_model=64,
        n_layers=6,
        pattern="M-*M*-",
        d_state=16,
        mamba_head_dim=16,
        n_groups=2,
        chunk_size=16,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        max_seq_len=512,
    ),
    # CPU benchmarks: about 37M parameters, beside llama-small (40M); 6 Mamba-2, 2 attention, 4 MLP layers
    "mamba2-hybrid-small": HybridConfig(
        vocab_size=32000,
        d_model=512,
        n_layers=12,
        pattern="M-M*M-M-M*M-",
        n_heads=8,
        n_kv_heads=4,
        d_ff=2048,
        tie_embeddings=True,
        max_seq_len=16384,
    ),
    # MLP activation unverified (docs/algorithms.md §2.4): the release scripts pass neither --swiglu nor --squared-relu,
    # which means Megatron's default GeLU; a checkpoint's args would settle it.
    "mamba2-hybrid-8b": HybridConfig(
        vocab_size=256000,
        d_model=4096,
        n_layers=56,
        pattern=HYBRID_8B_PATTERN,
        d_state=128,
        mamba_head_dim=64,
        n_groups=8,
        chunk_size=128,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        d_ff=16384,
        mlp_activation="gelu",
        max_seq_len=4096,
    ),
}
