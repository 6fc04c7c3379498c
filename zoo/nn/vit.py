"""The CLIP vision transformer (ViT), as HF's CLIPVisionModel computes it, plus CLIP's image projection.

pixels (B, 3, S, S) -> patches (a stride-p convolution, no bias) -> [CLS; patches] + learned positions ->
pre-LayerNorm -> layers of (x + attn(LN(x)), x + MLP(LN(x))) with biases and quick-GELU -> hidden states
(B, 1 + (S/p)^2, d), not normed (what a Flamingo resampler reads); the CLS row through the post-LayerNorm is
the pooled output, and its projection (no bias) is the CLIP image embedding that the retriever indexes.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.norms import LayerNorm

VIT_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI CLIP's GELU approximation
    "gelu": F.gelu,
}


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 14
    d_model: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    d_ff: int = 4096
    projection_dim: int | None = 768  # None: no projection (the embedding is the pooled output)
    activation: str = "quick_gelu"
    norm_eps: float = 1e-5
    channels: int = 3

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in VIT_ACTIVATIONS:
            raise ValueError(f"unknown ViT activation {self.activation!r}; known: {', '.join(VIT_ACTIVATIONS)}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def embedding_dim(self) -> int:
        """Width of the image embedding (the retriever's vectors)."""
        return self.projection_dim or self.d_model

    def to_dict(self) -> dict:
        return asdict(self)

    def num_params(self) -> int:
        d, f = self.d_model, self.d_ff
        layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
        embeddings = self.channels * self.patch_size**2 * d + d + (self.n_patches + 1) * d
        projection = d * self.projection_dim if self.projection_dim else 0
        return embeddings + self.n_layers * layer + 4 * d + projection


class ViTAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, d = x.shape
        q, k, v = (
            p(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, d))


class ViTLayer(nn.Module):
    def __init__(self, c: ViTConfig):
        super().__init__()
        self.layer_norm1 = LayerNorm(c.d_model, c.norm_eps)
        self.self_attn = ViTAttention(c.d_model, c.n_heads)
        self.layer_norm2 = LayerNorm(c.d_model, c.norm_eps)
        self.fc1 = nn.Linear(c.d_model, c.d_ff)
        self.fc2 = nn.Linear(c.d_ff, c.d_model)
        self.act = VIT_ACTIVATIONS[c.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class VisionTransformer(nn.Module):
    """CLIP's vision tower: `forward(pixels)` -> (hidden states (B, 1 + patches, d), embedding (B, E))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = self.config = config
        self.patch_embedding = nn.Conv2d(c.channels, c.d_model, c.patch_size, stride=c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(c.d_model))
        self.position_embedding = nn.Parameter(torch.empty(c.n_patches + 1, c.d_model))
        self.pre_layrnorm = LayerNorm(c.d_model, c.norm_eps)  # HF's spelling, kept so the names map one to one
        self.layers = nn.ModuleList(ViTLayer(c) for _ in range(c.n_layers))
        self.post_layernorm = LayerNorm(c.d_model, c.norm_eps)
        self.projection = nn.Linear(c.d_model, c.projection_dim, bias=False) if c.projection_dim else None

    def reset_parameters(self, std: float = 0.02):
        """Matrices N(0, 1 / fan_in) (variance-preserving: with a 0.02 init every random tower's embedding is
        nearly its constant CLS row, so seeded random weights could not tell images apart), biases 0, norms
        1, class and position embeddings N(0, std)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, std=module.weight[0].numel() ** -0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LayerNorm):
                module.reset_parameters()
        nn.init.normal_(self.class_embedding, std=std)
        nn.init.normal_(self.position_embedding, std=std)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = pixel_values.shape[0]
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(B, 1, -1), patches], dim=1) + self.position_embedding
        x = self.pre_layrnorm(x)
        for layer in self.layers:
            x = layer(x)
        pooled = self.post_layernorm(x[:, 0])
        return x, pooled if self.projection is None else self.projection(pooled)
