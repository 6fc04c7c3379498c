"""Re-ViLM family (docs/algorithms.md §7): a frozen CLIP ViT, a Perceiver resampler, gated cross-attention to
the image before chosen layers of a frozen llama LM, and gated cross-attention to retrieved captions
encoded by a 2-layer bidirectional encoder.

The nested configs (`lm`, `vision`) are stored as plain dicts in config.json and become LlamaConfig and
ViTConfig here.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from zoo.config import DTYPE_BYTES, ModelConfig
from zoo.models.llama.config import LlamaConfig
from zoo.nn.vit import ViTConfig


@dataclass
class RevilmConfig(ModelConfig):
    lm: LlamaConfig
    vision: ViTConfig
    media_layers: list[int]  # LM layer indices preceded by a gated cross-attention block to the image
    retrieval_layers: list[int]  # LM layer indices preceded by a gated cross-attention block to the captions
    n_latents: int = 64
    resampler_depth: int = 6
    resampler_heads: int = 8
    resampler_head_dim: int = 64
    resampler_activation: str = "gelu"
    xattn_heads: int | None = None  # None: the LM's heads
    xattn_d_ff: int | None = None  # None: the LM's d_ff
    encoder_layers: int = 2
    n_neighbors: int = 2  # retrieved captions per image (RETRO's retro_num_neighbors)
    neighbor_length: int = 64  # tokens per retrieved caption (longer ones are cut, shorter padded and masked)

    family: ClassVar[str] = "revilm"

    def __post_init__(self):
        if isinstance(self.lm, dict):
            self.lm = LlamaConfig.from_dict(self.lm)
        if isinstance(self.vision, dict):
            self.vision = ViTConfig(**self.vision)
        self.media_layers, self.retrieval_layers = list(self.media_layers), list(self.retrieval_layers)
        for name, layers in (("media_layers", self.media_layers), ("retrieval_layers", self.retrieval_layers)):
            bad = [i for i in layers if not 0 <= i < self.lm.n_layers]
            if bad or len(set(layers)) != len(layers):
                raise ValueError(f"{name}={layers} must be distinct LM layer indices in [0, {self.lm.n_layers})")
        if not self.media_layers:
            raise ValueError("media_layers is empty: a Re-ViLM model cross-attends to its image somewhere")
        if self.xattn_heads is None:
            self.xattn_heads = self.lm.n_heads
        if self.xattn_d_ff is None:
            self.xattn_d_ff = self.lm.d_ff
        if self.lm.d_model % self.xattn_heads:
            raise ValueError(f"LM d_model={self.lm.d_model} is not divisible by xattn_heads={self.xattn_heads}")

    # the fields the registry, the engine and the CLI read on every config
    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    @property
    def d_model(self) -> int:
        return self.lm.d_model

    @property
    def n_layers(self) -> int:
        return self.lm.n_layers

    @property
    def max_seq_len(self) -> int:
        return self.lm.max_seq_len

    @property
    def tie_embeddings(self) -> bool:
        return self.lm.tie_embeddings

    @property
    def xattn_head_dim(self) -> int:
        return self.lm.d_model // self.xattn_heads

    @property
    def retrieved_tokens(self) -> int:
        """Length of the retrieval context of one image: n_neighbors captions of neighbor_length tokens."""
        return self.n_neighbors * self.neighbor_length

    def resampler_params(self) -> int:
        d, inner = self.vision.d_model, self.resampler_heads * self.resampler_head_dim
        attention = 4 * d + 3 * d * inner + inner * d
        feed_forward = 2 * d + 2 * d * 4 * d
        return self.n_latents * d + self.resampler_depth * (attention + feed_forward) + 2 * d

    def xattn_block_params(self, kv_dim: int) -> int:
        d, inner = self.lm.d_model, self.xattn_heads * self.xattn_head_dim
        return 2 * d + d * inner + 2 * kv_dim * inner + inner * d + 3 * d * self.xattn_d_ff + 2

    def encoder_params(self) -> int:
        d, inner = self.lm.d_model, self.lm.n_heads * self.lm.head_dim
        layer = 2 * d + 4 * d * inner + 3 * d * self.lm.d_ff
        return self.neighbor_length * d + self.encoder_layers * layer + d

    def num_params(self) -> int:
        blocks = len(self.media_layers) * self.xattn_block_params(self.vision.d_model)
        blocks += len(self.retrieval_layers) * self.xattn_block_params(self.lm.d_model)
        return (
            self.lm.num_params() + self.vision.num_params() + self.resampler_params() + blocks + self.encoder_params()
        )

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        return self.lm.cache_bytes_per_token(dtype)

    def state_bytes_per_sequence(self, dtype: torch.dtype = torch.float16) -> int:
        """The media and retrieved-caption keys and values (fixed per request), plus the caption mask."""
        per_token = 2 * self.xattn_heads * self.xattn_head_dim * DTYPE_BYTES[dtype]
        media = len(self.media_layers) * self.n_latents * per_token
        return media + len(self.retrieval_layers) * self.retrieved_tokens * per_token + self.retrieved_tokens

    def lookup_params(self) -> int:
        return self.lm.lookup_params()

    def mixer_flops_per_token(self, context: float) -> float:
        per_key = 4 * self.xattn_heads * self.xattn_head_dim
        cross = per_key * (len(self.media_layers) * self.n_latents + len(self.retrieval_layers) * self.retrieved_tokens)
        return self.lm.mixer_flops_per_token(context) + cross


def every(step: int, n_layers: int, start: int = 0) -> list[int]:
    return list(range(start, n_layers, step))


CLIP_VIT_L14 = ViTConfig(image_size=224, patch_size=14, d_model=1024, n_layers=24, n_heads=16, d_ff=4096)


def paper_size(d_model: int, n_heads: int) -> RevilmConfig:
    """A 24-layer LM of the paper's base/medium/large shapes (from memory, see README): CLIP ViT-L/14,
    Flamingo's resampler (6 blocks, 64 latents, 8 x 64 heads), image cross-attention before every 4th layer
    and retrieval cross-attention at RETRO's layers for a deep model (9, 12, ..., 1-based)."""
    lm = LlamaConfig(
        vocab_size=50304,  # GPT-2's BPE padded to a multiple of 128, as Megatron's RETRO [mem]
        d_model=d_model,
        n_layers=24,
        n_heads=n_heads,
        d_ff=256 * round(8 * d_model / 3 / 256),  # SwiGLU's 2/3 of 4d
        max_seq_len=2048,
    )
    return RevilmConfig(lm=lm, vision=CLIP_VIT_L14, media_layers=every(4, 24), retrieval_layers=every(3, 24, start=8))


SIZES = {
    # tests: a 2-layer llama-tiny-shaped LM (GQA), a 2-layer 32x32 ViT, media cross-attention before both
    # layers and retrieval cross-attention before the second
    "revilm-tiny": RevilmConfig(
        lm=LlamaConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160, max_seq_len=256),
        vision=ViTConfig(image_size=32, patch_size=8, d_model=48, n_layers=2, n_heads=4, d_ff=96, projection_dim=32),
        media_layers=[0, 1],
        retrieval_layers=[1],
        n_latents=8,
        resampler_depth=2,
        resampler_heads=2,
        resampler_head_dim=16,
        n_neighbors=2,
        neighbor_length=12,
    ),
    "revilm-base": paper_size(1024, 16),
    "revilm-medium": paper_size(1536, 16),
    "revilm-large": paper_size(2048, 32),
}
