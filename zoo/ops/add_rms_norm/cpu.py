"""The residual add, then torch's fused rms_norm kernel on the sum (see zoo/ops/rms_norm/cpu.py)."""

import torch

from zoo.ops.rms_norm.cpu import rms_norm_cpu


def add_rms_norm_cpu(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    total = x + residual
    return rms_norm_cpu(total, weight, eps), total
