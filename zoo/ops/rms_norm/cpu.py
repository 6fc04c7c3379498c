"""RMSNorm on CPU through torch's fused rms_norm kernel, which accumulates in fp32 and rounds the
normalised value to x's dtype: the reference's numerics without its fp32 copy of x."""

import torch


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    normed = torch.rms_norm(x, (x.shape[-1],), eps=eps)
    if normed.dtype == torch.promote_types(x.dtype, weight.dtype):
        return normed.mul_(weight)
    return weight * normed
