"""One Mamba-2 decode step's whole recurrent region (docs/algorithms.md §2.1 steps 2-6, §2.3) as the
composition of the three ops it fuses:
    conv_out, new_window = causal_conv1d_update(window, xbc)         conv step + SiLU
    x, B, C = split(conv_out)                                        [x (h*p) | B (g*n) | C (g*n)]
    y, new_state = ssd_state_update(state, x, dt, A, B, C, D, ...)   dt softplus/clamp, S and y = S C + D x
    out = gated_rms_norm(y.to(z.dtype), z, norm_weight, h*p / g)     norm groups are the B/C groups
The number of B/C groups g is not an argument: conv_dim = h*p + 2*g*n gives it.
"""

import torch

from zoo.ops.causal_conv1d.reference import causal_conv1d_update_ref
from zoo.ops.gated_rms_norm.reference import gated_rms_norm_ref
from zoo.ops.ssd_state_update.reference import ssd_state_update_ref


def bc_groups(conv_dim: int, heads: int, head_dim: int, d_state: int) -> int:
    """The number g of B/C groups in an xBC of conv_dim = heads * head_dim + 2 * g * d_state channels."""
    return (conv_dim - heads * head_dim) // (2 * d_state)


def mamba2_decode_step_ref(
    conv_window: torch.Tensor,
    ssm_state: torch.Tensor,
    xbc: torch.Tensor,
    z: torch.Tensor,
    dt: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    A: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    norm_weight: torch.Tensor,
    dt_min: float,
    dt_max: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """conv_window (b, conv_dim, K); ssm_state (b, h, p, n); xbc (b, conv_dim); z (b, h*p); dt (b, h) raw
    -> out (b, h*p), new_conv_window (b, conv_dim, K), new_ssm_state (b, h, p, n) fp32."""
    _, heads, head_dim, d_state = ssm_state.shape
    groups = bc_groups(xbc.shape[1], heads, head_dim, d_state)
    conv_out, new_conv_window = causal_conv1d_update_ref(conv_window, xbc, conv_weight, conv_bias)
    x, B, C = conv_out.split([heads * head_dim, groups * d_state, groups * d_state], dim=-1)
    y, new_ssm_state = ssd_state_update_ref(
        ssm_state,
        x.unflatten(-1, (heads, head_dim)),
        dt,
        A,
        B.unflatten(-1, (groups, d_state)),
        C.unflatten(-1, (groups, d_state)),
        D,
        dt_bias,
        dt_min,
        dt_max,
    )
    out = gated_rms_norm_ref(y.flatten(-2).to(z.dtype), z, norm_weight, heads * head_dim // groups, eps)
    return out, new_conv_window, new_ssm_state
