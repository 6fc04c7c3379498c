"""One recurrent Mamba-2 step (docs/algorithms.md §2.3), from the raw dt as mamba_ssm's
selective_state_update takes it:
    dt = clamp(softplus(dt_raw + dt_bias), dt_min, dt_max)
    S  = exp(dt A_h) S + dt x B^T,        y = S C + D_h x
Head h reads group g = h // (H / G) of B and C. All arithmetic is in fp32.
"""

import torch
import torch.nn.functional as F

from zoo.ops.ssd_chunk_scan.reference import heads_from_groups


def ssd_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    dt_min: float,
    dt_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """state (b, h, p, n); x (b, h, p); dt (b, h) raw; A, D, dt_bias (h,); B, C (b, g, n).
    Returns y (b, h, p) and the new state (b, h, p, n), both fp32."""
    h = x.shape[1]
    dt = F.softplus(dt.float() + dt_bias.float()).clamp(dt_min, dt_max)
    decay = torch.exp(dt * A.float())
    B, C = heads_from_groups(B.float(), h, dim=1), heads_from_groups(C.float(), h, dim=1)
    x = x.float()
    new_state = state.float() * decay[..., None, None] + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, C) + D.float()[:, None] * x
    return y, new_state
