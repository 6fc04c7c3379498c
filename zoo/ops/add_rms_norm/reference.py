"""A pre-norm block's `h = x + residual; rms_norm(h)`: the sum in the inputs' dtype, the norm as in
zoo/nn/norms.py (fp32 statistics, cast back, then * weight) on the rounded sum."""

import torch

from zoo.ops.rms_norm.reference import rms_norm_ref


def add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual (..., D), weight (D,) -> (rms_norm(x + residual) * weight, x + residual)."""
    total = x + residual
    return rms_norm_ref(total, weight, eps), total
