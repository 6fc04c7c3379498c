"""Flamingo's blocks (docs/algorithms.md §7): the Perceiver resampler, the gated cross-attention dense block
with media masking, and a small bidirectional text encoder for retrieved captions (RETRO's 2-layer encoder).

Parameter names follow HF's IDEFICS (IdeficsPerceiverResampler, IdeficsGatedCrossAttentionLayer), an open
Flamingo re-implementation, so a converter maps them one to one. The options are Flamingo's: one scalar
tanh gate per sublayer initialised to 0 (IDEFICS alpha_type "float", alpha_initializer "zeros"), no q/k
layer norms; the resampler's FFN uses GELU as open_flamingo does (IDEFICS uses ReLU: `activation="relu"`).
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.mlp import GatedMLP, activation
from zoo.nn.norms import LayerNorm, RMSNorm


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, L, _ = x.shape
    return x.view(B, L, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, L, D = x.shape
    return x.transpose(1, 2).reshape(B, L, H * D)


def masked_attention(q, k, v, visible: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the keys where `visible` (broadcast to (B, H, Lq, Lk)) is True. A query
    that sees no key gets a uniform average here (a finite mask value, never NaN): callers zero it."""
    bias = None
    if visible is not None:
        bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~visible, torch.finfo(q.dtype).min
        )
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


class PerceiverAttention(nn.Module):
    """Latents attend to [LN(context); LN(latents)] (keys and values), queries from LN(latents); no biases."""

    def __init__(self, dim: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.scale = n_heads, head_dim**-0.5
        self.context_layer_norm = LayerNorm(dim)
        self.latents_layer_norm = LayerNorm(dim)
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.output_proj = nn.Linear(n_heads * head_dim, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context, latents = self.context_layer_norm(context), self.latents_layer_norm(latents)
        both = torch.cat([context, latents], dim=1)
        q = split_heads(self.q_proj(latents), self.n_heads)
        k, v = split_heads(self.k_proj(both), self.n_heads), split_heads(self.v_proj(both), self.n_heads)
        return self.output_proj(merge_heads(masked_attention(q, k, v, None, self.scale)))


class PerceiverFeedForward(nn.Module):
    """LN -> Linear(mult * d) -> activation -> Linear(d), no biases."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.ln = LayerNorm(dim)
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.act = activation(act)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.fc(self.ln(x))))


class PerceiverResampler(nn.Module):
    """Vision features (B, N, d) -> n_latents tokens (B, n_latents, d): `depth` blocks of
    L <- L + attn([X; L] -> L), L <- L + FFN(L), then a LayerNorm."""

    def __init__(self, dim: int, depth: int, n_heads: int, head_dim: int, n_latents: int, ff_mult: int = 4, act="gelu"):
        super().__init__()
        self.latents = nn.Parameter(torch.empty(n_latents, dim))
        self.blocks = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, n_heads, head_dim), PerceiverFeedForward(dim, ff_mult * dim, act)])
            for _ in range(depth)
        )
        self.layer_norm = LayerNorm(dim)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(context.shape[0], -1, -1)
        for attn, ff in self.blocks:
            latents = attn(context, latents) + latents
            latents = ff(latents) + latents
        return self.layer_norm(latents)


def media_visibility(media_locations: torch.Tensor, n_images: int, tokens_per_image: int) -> torch.Tensor:
    """Flamingo's masking rule: text position i sees the media tokens of the most recent image at or before
    it. media_locations (B, L) bool marks each image's position in the text; image m (0-based, in order)
    owns media tokens m * tokens_per_image .. (m + 1) * tokens_per_image - 1. Returns (B, 1, L, M) bool;
    text before the first image sees nothing."""
    text_time = media_locations.long().cumsum(dim=-1)  # (B, L): how many images precede or sit at i
    media_time = torch.arange(n_images * tokens_per_image, device=media_locations.device) // tokens_per_image + 1
    return (text_time[:, :, None] == media_time[None, None, :])[:, None]


class GatedCrossAttentionBlock(nn.Module):
    """x <- x + tanh(alpha_cross_attn) * XAttn(RMSNorm(x), media); x <- x + tanh(alpha_dense) * MLP(RMSNorm(x)).

    The media keys and values (`keys_values`) are computed once per request and may be cached; a query that
    sees no media token (text before any image, or no retrieved caption) gets a zero attention output. With
    both gates at 0 (their initial value) the block is the identity."""

    def __init__(self, d_model: int, kv_dim: int, n_heads: int, head_dim: int, d_ff: int, eps: float, act="silu"):
        super().__init__()
        self.n_heads, self.scale = n_heads, head_dim**-0.5
        self.input_layernorm = RMSNorm(d_model, eps)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, n_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, n_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.post_attention_layernorm = RMSNorm(d_model, eps)
        self.mlp = GatedMLP(d_model, d_ff, act=act)
        self.alpha_cross_attn = nn.Parameter(torch.zeros(1))
        self.alpha_dense = nn.Parameter(torch.zeros(1))

    def keys_values(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """media (B, M, kv_dim) -> k, v (B, H, M, D)."""
        return split_heads(self.k_proj(media), self.n_heads), split_heads(self.v_proj(media), self.n_heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """x (B, L, d); k, v (B, H, M, D); visible: bool broadcastable to (B, 1, L, M)."""
        q = split_heads(self.q_proj(self.input_layernorm(x)), self.n_heads)
        attended = self.o_proj(merge_heads(masked_attention(q, k, v, visible, self.scale)))
        sees_any = visible.any(dim=-1).transpose(1, 2)  # (B, L, 1) (or broadcastable)
        attended = attended.masked_fill(~sees_any, 0.0)
        x = x + torch.tanh(self.alpha_cross_attn) * attended
        return x + torch.tanh(self.alpha_dense) * self.mlp(self.post_attention_layernorm(x))


class EncoderLayer(nn.Module):
    """A pre-norm bidirectional transformer layer (RMSNorm, multi-head attention over unmasked keys, SwiGLU)."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, d_ff: int, eps: float):
        super().__init__()
        self.n_heads, self.scale = n_heads, head_dim**-0.5
        self.attn_norm = RMSNorm(d_model, eps)
        self.wq = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.mlp_norm = RMSNorm(d_model, eps)
        self.mlp = GatedMLP(d_model, d_ff)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x)
        q, k, v = (split_heads(p(h), self.n_heads) for p in (self.wq, self.wk, self.wv))
        x = x + self.wo(merge_heads(masked_attention(q, k, v, key_mask[:, None, None, :], self.scale)))
        return x + self.mlp(self.mlp_norm(x))


class CaptionEncoder(nn.Module):
    """Retrieved captions (N, Lc) token embeddings -> encoded tokens (N, Lc, d): learned positions within a
    caption, `n_layers` bidirectional layers (RETRO's retrieval encoder has 2), a final RMSNorm. Padded
    tokens are masked as keys; their rows are computed but masked again by the cross-attention that reads them."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, head_dim: int, d_ff: int, max_len: int, eps: float):
        super().__init__()
        self.position_embedding = nn.Parameter(torch.empty(max_len, d_model))
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, head_dim, d_ff, eps) for _ in range(n_layers))
        self.norm = RMSNorm(d_model, eps)

    def forward(self, embedded: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = embedded + self.position_embedding[: embedded.shape[1]]
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.norm(x)
