"""The gated RMSNorm on CPU: the gate in fp32, then torch's fused rms_norm kernel per group (fp32
statistics and the result rounded to x's dtype, as the reference), the weight multiplied in place."""

import torch
import torch.nn.functional as F


def gated_rms_norm_cpu(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float
) -> torch.Tensor:
    gated = x.float() * F.silu(z.float())
    groups = gated.view(*gated.shape[:-1], -1, group_size)
    normed = torch.rms_norm(groups, (group_size,), eps=eps).view(gated.shape).to(x.dtype)
    if normed.dtype == torch.promote_types(x.dtype, weight.dtype):
        return normed.mul_(weight)
    return weight * normed
