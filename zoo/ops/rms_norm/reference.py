"""The RMSNorm of zoo/nn/norms.py: y = weight * (x / sqrt(mean(x^2) + eps)) with the statistics and the
normalisation in fp32, the normalised value cast back to x's dtype before the weight multiplies it."""

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., D), weight (D,) -> (..., D) in the promoted dtype of x and weight."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)
