"""Hourglass configs (docs/algorithms.md §5): a decoder-only LM whose middle layers run on shortened sequences.

The layers are given by a hierarchy string of `layers@factor` items, the paper's notation: `2@1 8@3 2@1` is
2 vanilla layers, 8 layers on a sequence shortened 3x, 2 vanilla layers. Levels nest palindromically:
`1@1 2@2 4@4 2@2 1@1` shortens 2x, then 2x again. A factor is the total (cumulative) shortening at its
level, as in trax, so each factor must divide the next one inwards; the middle item is the deepest level
and item i pairs with item n-1-i (its pre and post layers), so the factors must mirror.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from zoo.config import DTYPE_BYTES, ModelConfig
from zoo.nn.transformer import DecoderConfig

DOWNSAMPLING = ("linear", "average", "attention")
UPSAMPLING = ("linear", "repeat", "attention")
RESAMPLING_INNER_DOWN = ("average", "linear")  # the pooling inside attention downsampling
RESAMPLING_INNER_UP = ("linear", "repeat")  # the upsampling inside attention upsampling


@dataclass(frozen=True)
class Level:
    """One level of the hierarchy: its total factor (1 at the top), its own factor over the level above,
    and its layers before and after the next level down (post is None at the deepest level)."""

    factor: int
    step: int
    pre_layers: int
    post_layers: int | None


def parse_hierarchy(text: str) -> list[Level]:
    """`2@1 8@3 2@1` -> [Level(1, 1, 2, 2), Level(3, 3, 8, None)]: the levels from the top down."""
    items = []
    for item in text.split():
        layers, at, factor = item.partition("@")
        if not at or not layers.isdigit() or not factor.isdigit():
            raise ValueError(f"bad hierarchy item {item!r} in {text!r}: expected <layers>@<factor>, e.g. 2@3")
        if int(factor) < 1:
            raise ValueError(f"bad hierarchy item {item!r} in {text!r}: the factor must be a positive integer")
        items.append((int(layers), int(factor)))
    if not items:
        raise ValueError("empty hierarchy: expected items <layers>@<factor>, e.g. '2@1 8@3 2@1'")
    factors = [factor for _, factor in items]
    if len(items) % 2 == 0 or factors != factors[::-1]:
        raise ValueError(f"unbalanced hierarchy {text!r}: the factors must rise to one middle item and mirror back")
    if factors[0] != 1:
        raise ValueError(f"hierarchy {text!r} must start and end at factor 1 (the full-length vanilla layers)")
    depth = len(items) // 2
    levels = []
    for i in range(depth + 1):
        above = factors[i - 1] if i else 1
        if factors[i] % above:
            raise ValueError(f"hierarchy {text!r}: factor {factors[i]} is not a multiple of the factor above, {above}")
        post = items[len(items) - 1 - i][0] if i < depth else None
        levels.append(Level(factors[i], factors[i] // above, items[i][0], post))
    return levels


@dataclass
class HourglassConfig(ModelConfig):
    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    hierarchy: str = "2@1 8@3 2@1"
    downsampling: str = "linear"  # "linear" | "average" | "attention"
    upsampling: str = "linear"  # "linear" | "repeat" | "attention"
    resampling_inner_down: str = "average"  # the pooling of attention downsampling (trax default)
    resampling_inner_up: str = "linear"  # the upsampling of attention upsampling (trax default)
    n_kv_heads: int | None = None  # None: multi-head attention
    head_dim: int | None = None  # None: d_model // n_heads
    max_seq_len: int = 2048
    norm: str = "layer"  # trax's LayerNorm; "rms" also works
    norm_eps: float = 1e-6
    activation: str = "gelu_tanh"  # trax's FastGelu
    mlp_bias: bool = True
    attention_bias: bool = False
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    init_std: float = 0.02

    family: ClassVar[str] = "hourglass"

    def __post_init__(self):
        self.levels  # noqa: B018 (validates the hierarchy string)
        for field, value, known in (
            ("downsampling", self.downsampling, DOWNSAMPLING),
            ("upsampling", self.upsampling, UPSAMPLING),
            ("resampling_inner_down", self.resampling_inner_down, RESAMPLING_INNER_DOWN),
            ("resampling_inner_up", self.resampling_inner_up, RESAMPLING_INNER_UP),
        ):
            if value not in known:
                raise ValueError(f"unknown {field} {value!r}; known: {', '.join(known)}")
        block = self.block_config()  # validates the head counts
        self.n_kv_heads, self.head_dim = block.n_kv_heads, block.head_dim

    @property
    def levels(self) -> list[Level]:
        return parse_hierarchy(self.hierarchy)

    @property
    def n_layers(self) -> int:
        """Transformer blocks over all levels (resampling layers not counted)."""
        return sum(level.pre_layers + (level.post_layers or 0) for level in self.levels)

    @property
    def n_valleys(self) -> int:
        return len(self.levels) - 1

    def block_config(self) -> DecoderConfig:
        """The config of every transformer block (and of the attention resampling layers)."""
        return DecoderConfig(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            max_seq_len=self.max_seq_len,
            norm=self.norm,
            norm_eps=self.norm_eps,
            mlp="plain",
            activation=self.activation,
            rope_theta=self.rope_theta,
            attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
            init_std=self.init_std,
        )

    def attention_layers(self) -> list[int]:
        """The total factor of each module with a KV cache: blocks, then resampling attention (the
        downsampling one attends at the level above, the upsampling one to the level below)."""
        factors = []
        for above, level in zip([None, *self.levels], self.levels):
            factors += [level.factor] * (level.pre_layers + (level.post_layers or 0))
            if above is not None:
                factors += [above.factor] * (self.downsampling == "attention")
                factors += [level.factor] * (self.upsampling == "attention")
        return factors

    def num_params(self) -> int:
        d, block = self.d_model, self.block_config()
        norm = d * (2 if self.norm == "layer" else 1)
        attention = d * block.n_heads * block.head_dim * 2 + d * block.n_kv_heads * block.head_dim * 2
        if self.attention_bias:
            attention += block.n_heads * block.head_dim + 2 * block.n_kv_heads * block.head_dim + d
        per_block = attention + block.mlp_params() + 2 * norm
        total = self.n_layers * per_block + (2 * len(self.levels) - 1) * norm  # a norm after every group
        for level in self.levels[1:]:
            k = level.step
            linear_pool, linear_up = k * d * d + d, d * k * d + k * d
            pools = {"average": 0, "linear": linear_pool}
            ups = {"repeat": 0, "linear": linear_up}
            resampling_attention = 3 * norm + attention + block.mlp_params()
            total += pools.get(self.downsampling, resampling_attention + pools[self.resampling_inner_down])
            total += ups.get(self.upsampling, resampling_attention + ups[self.resampling_inner_up])
            total += norm  # the valley's output norm
        return total + self.vocab_size * d * (1 if self.tie_embeddings else 2)

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        """KV bytes one token adds as allocated: every KV cache, shortened levels included, holds `max_len`
        slots (a state shape cannot say max_len / factor), of which a level of factor K uses 1/K."""
        block = self.block_config()
        return 2 * len(self.attention_layers()) * block.n_kv_heads * block.head_dim * DTYPE_BYTES[dtype]

    def state_bytes_per_sequence(self, dtype: torch.dtype = torch.float16) -> int:
        """Per valley: the window of the last `step` inputs and the shortened output in use."""
        return sum((level.step + 1) * self.d_model * DTYPE_BYTES[dtype] for level in self.levels[1:])

    def mixer_flops_per_token(self, context: float) -> float:
        """q.k and p.v of each attention over the slots its level holds (context / factor)."""
        block = self.block_config()
        return sum(4 * context / factor * block.n_heads * block.head_dim for factor in self.attention_layers())


SIZES = {
    # tests: two nested levels (2x, then 2x again), attention resampling, GQA 4/2
    "hourglass-tiny": HourglassConfig(
        vocab_size=256,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        hierarchy="1@1 1@2 2@4 1@2 1@1",
        downsampling="attention",
        upsampling="attention",
        max_seq_len=256,
    ),
    # CPU benchmarks: the paper's (2@1, 8@3, 2@1) at d 512 with linear resampling, about 72M parameters
    "hourglass-small": HourglassConfig(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, hierarchy="2@1 8@3 2@1"),
    # enwik8 (trax hourglass_enwik8.gin): vanilla (5, 5), '24@3', d 512, attention resampling, repeat inside
    "hourglass-enwik8": HourglassConfig(
        vocab_size=256,
        d_model=512,
        n_heads=8,
        d_ff=2048,
        hierarchy="5@1 24@3 5@1",
        downsampling="attention",
        upsampling="attention",
        resampling_inner_up="repeat",
    ),
}
