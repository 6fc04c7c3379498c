"""The gated RMSNorm of zoo/nn/mamba2.py (mamba_ssm's rms_norm_ref with norm_before_gate=False): the gate
x * silu(z) in fp32, RMS statistics per contiguous group of `group_size` channels, the result cast back
to x's dtype, then * weight (docs/algorithms.md §2.1)."""

import torch
import torch.nn.functional as F


def gated_rms_norm_ref(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float
) -> torch.Tensor:
    """x, z (..., D), weight (D,), D a multiple of group_size -> (..., D)."""
    gated = x.float() * F.silu(z.float())
    groups = gated.unflatten(-1, (-1, group_size))
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return weight * groups.flatten(-2).to(x.dtype)
