"""One recurrent Mamba-2 step for CPU: the reference's arithmetic in three passes over the state.

Heads are viewed as (group, head in group) so B and C broadcast without being copied per head; the
decay is one multiply, the rank-1 input is added in place by a batched outer product (baddbmm_), and
S C is a batched matvec.
"""

import torch
import torch.nn.functional as F


def ssd_state_update_cpu(state, x, dt, A, B, C, D, dt_bias, dt_min, dt_max):
    b, h, p, n = state.shape
    g = B.shape[1]
    dt = F.softplus(dt.float() + dt_bias.float()).clamp(dt_min, dt_max)  # (b, h)
    x = x.float()
    by_group = (b * g, (h // g) * p)
    new_state = state.float() * torch.exp(dt * A.float())[..., None, None]
    new_state.view(*by_group, n).baddbmm_((x * dt[..., None]).reshape(*by_group, 1), B.float().reshape(b * g, 1, n))
    y = torch.bmm(new_state.view(*by_group, n), C.float().reshape(b * g, n, 1)).view(b, h, p)
    return y.addcmul_(x, D.float()[:, None]), new_state
