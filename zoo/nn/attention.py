"""Multi-head self-attention with grouped KV heads and an explicit, preallocated KV cache.

The cache of one layer is {"k", "v"}, each (B, Hkv, T, D). Every sequence of the batch has
its own position, so prompts of different lengths share one batch: prefill writes slots 0..L-1 of every
row (right-padded rows write padding that decode later overwrites), and a decode step writes slot
`positions[b]` of row b and attends to slots 0..positions[b]. The cache is updated in place and the same
tensors are returned, so the step reads as explicit state in and out (torch.export turns the in-place
writes into outputs).
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.rope import apply_rope

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (B, 1, L, D)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v. q: (B, H, L, D); k, v: (B, Hkv, L, D) with H % Hkv == 0."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)


def cached_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, last_visible: torch.Tensor, scale: float
) -> torch.Tensor:
    """One query per row against the cache, written out: softmax(q K^T * scale, slots <= last_visible) V.

    q: (B, H, 1, D); caches: (B, Hkv, T, D); last_visible: (B,) per row or (B, Hkv) per KV head. The
    G = H / Hkv query heads that share a KV head are laid out along the query axis, so no K/V head is
    repeated in memory.
    """
    B, H, _, D = q.shape
    Hkv, T = k_cache.shape[1], k_cache.shape[2]
    q = q.reshape(B, Hkv, H // Hkv, D)
    scores = (q @ k_cache.transpose(-1, -2)).float() * scale  # (B, Hkv, G, T)
    visible = torch.arange(T, device=q.device) <= last_visible.view(B, -1, 1, 1)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1).to(v_cache.dtype)
    return (probs @ v_cache).reshape(B, H, 1, D)


class SelfAttention(nn.Module):
    state_names = ("k", "v")

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        bias: bool = False,
        qkv_bias: bool | None = None,
    ):
        """bias: on all four projections; qkv_bias (default: bias) on q, k, v only (Qwen2)."""
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale = head_dim**-0.5
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.wq = nn.Linear(d_model, n_heads * head_dim, bias=qkv_bias)
        self.wk = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias)
        self.wv = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def project(self, x: torch.Tensor, rope: Rope | None):
        """x: (B, L, d) -> q (B, H, L, D), k and v (B, Hkv, L, D); q and k rotated by `rope` = (cos, sin)."""
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        B, _, L, _ = attn.shape
        return self.wo(attn.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))

    def state_shapes(self, batch: int, max_len: int):
        shape = (batch, self.n_kv_heads, max_len, self.head_dim)
        return {"k": (shape, None), "v": (shape, None)}

    def forward(self, x: torch.Tensor, rope: Rope | None, state: dict | None = None, lengths=None) -> torch.Tensor:
        """Full causal forward over x; with `state`, also write k, v into slots 0..L-1 (prefill; rows past
        their `lengths` write padding that decode overwrites)."""
        q, k, v = self.project(x, rope)
        if state is not None:
            L = x.shape[1]
            state["k"][:, :, :L] = k
            state["v"][:, :, :L] = v
        return self.output(causal_attention(q, k, v, self.scale))

    def decode(self, x: torch.Tensor, positions: torch.Tensor, rope: Rope | None, state: dict) -> torch.Tensor:
        """One new token per row. x: (B, 1, d); positions: (B,).

        Writes slot positions[b] of row b, then attends to slots 0..positions[b].
        """
        q, k, v = self.project(x, rope)
        rows = torch.arange(x.shape[0], device=x.device)
        k_cache, v_cache = state["k"], state["v"]
        k_cache[rows, :, positions] = k[:, :, 0]
        v_cache[rows, :, positions] = v[:, :, 0]
        return self.output(cached_attention(q, k_cache, v_cache, positions, self.scale))
