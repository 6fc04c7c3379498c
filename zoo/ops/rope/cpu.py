"""RoPE on CPU. Small inputs (decode steps) take the fewest ops: one mul and one addcmul with
rotate_half(x), since per-op overhead dominates. Larger ones (prefill) skip rotate_half's concatenation:
out = x * cos written into a contiguous buffer, then each half gets the other half times sin added in
place (addcmul on narrowed views)."""

import torch

from zoo.ops.rope.reference import rotate_half

FEWEST_OPS_UP_TO = 1 << 14  # elements of x


def rope_cpu(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if x.numel() <= FEWEST_OPS_UP_TO:
        return torch.addcmul(x * cos, rotate_half(x), sin)
    half = x.shape[-1] // 2
    dtype = torch.promote_types(torch.promote_types(x.dtype, cos.dtype), sin.dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    torch.mul(x, cos, out=out)
    out.narrow(-1, 0, half).addcmul_(x.narrow(-1, half, half), sin.narrow(-1, 0, half), value=-1)
    out.narrow(-1, half, half).addcmul_(x.narrow(-1, 0, half), sin.narrow(-1, half, half))
    return out
