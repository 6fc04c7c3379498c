"""One Mamba-2 decode step for CPU: the arithmetic of the three CPU implementations it fuses
(zoo/ops/causal_conv1d, ssd_state_update, gated_rms_norm), on views of one conv output instead of the
chain's split copies, with the roundings of the chain (conv output to xbc's dtype, y to z's dtype).

The shifted window is written into one fresh tensor and the K-tap dot is one vecdot; heads are viewed as
(group, head in group) so B and C broadcast without being copied per head; the state's decay is one
multiply, its rank-1 input is added in place by a broadcast outer product and y = S C is a batched matvec;
the gate is formed in place and each group is normalised by torch's fused rms_norm.
"""

import torch
import torch.nn.functional as F

from zoo.ops.mamba2_decode_step.reference import bc_groups


def mamba2_decode_step_cpu(
    conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, dt_min, dt_max, eps
):
    b, h, p, n = ssm_state.shape
    d_inner = h * p
    g = bc_groups(xbc.shape[1], h, p, n)
    new_window = conv_window.new_empty(conv_window.shape)
    new_window[..., :-1] = conv_window[..., 1:]
    new_window[..., -1] = xbc
    conv_out = torch.linalg.vecdot(new_window.float(), conv_weight.float())
    if conv_bias is not None:
        conv_out.add_(conv_bias.float())
    conv_out = F.silu(conv_out, inplace=True).to(xbc.dtype).float()  # no copies in fp32
    x = conv_out[:, :d_inner].view(b, h, p)
    B = conv_out[:, d_inner : d_inner + g * n].reshape(b * g, 1, n)
    C = conv_out[:, d_inner + g * n :].reshape(b * g, 1, n)

    dt = F.softplus(dt.float() + dt_bias.float()).clamp(dt_min, dt_max)  # (b, h)
    by_group = (b * g, (h // g) * p)
    new_state = ssm_state.float() * torch.exp(dt * A.float())[..., None, None]
    new_state.view(*by_group, n).addcmul_((x * dt[..., None]).view(*by_group, 1), B)
    # y = S C as C^T S^T: the GEMV with the transposed state is the faster one on CPU
    y = torch.bmm(C, new_state.view(*by_group, n).transpose(1, 2)).view(b, h, p).addcmul_(x, D.float()[:, None])

    gated = F.silu(z.float()).mul_(y.view(b, d_inner).to(z.dtype))
    group_size = d_inner // g
    normed = torch.rms_norm(gated.view(b, g, group_size), (group_size,), eps=eps).view(b, d_inner).to(z.dtype)
    out = (
        normed.mul_(norm_weight)
        if normed.dtype == torch.promote_types(z.dtype, norm_weight.dtype)
        else normed * norm_weight
    )
    return out, new_window, new_state
