"""apply_rope of zoo/nn/rope.py: channel pairs (i, i + D/2) rotated by each position's angle,
x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x[D/2:], x[:D/2])."""

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., D) with D even; cos, sin broadcastable to x (e.g. (B, 1, L, D) for x (B, H, L, D))."""
    return x * cos + rotate_half(x) * sin
