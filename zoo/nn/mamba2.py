"""The Mamba-2 mixer (docs/algorithms.md §2.1) with its prefill and decode-step state handling.

The expensive regions are zoo ops (zoo/ops): prefill runs zoo::causal_conv1d and zoo::ssd_chunk_scan,
a decode step zoo::causal_conv1d_update and zoo::ssd_state_update, one node each per layer in a captured
graph. State per layer, as explicit tensors the ops return and the mixer copies into place (so a runner's
buffers are reused):
- conv: (B, conv_dim, d_conv), the last d_conv raw (pre-conv) xBC inputs, left zero-padded;
- ssm: (B, heads, head_dim, d_state), fp32.
Parameter names follow mamba_ssm / HF (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from zoo.ops.ssd_chunk_scan import ssd_chunk_scan
from zoo.ops.ssd_state_update import ssd_state_update

SSM_STATE_DTYPE = torch.float32


class GatedRMSNorm(nn.Module):
    """y = RMSNorm_grouped(x * silu(z)) * w, statistics per contiguous group of `group_size` channels, in
    fp32 (mamba_ssm rms_norm_ref with norm_before_gate=False)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float() * F.silu(z.float())
        groups = x.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.flatten(-2).to(dtype)


class Mamba2Mixer(nn.Module):
    state_names = ("conv", "ssm")

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        d_state: int,
        n_groups: int,
        d_conv: int = 4,
        chunk_size: int = 256,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if n_heads % n_groups:
            raise ValueError(f"mamba heads={n_heads} is not a multiple of n_groups={n_groups}")
        self.n_heads, self.head_dim, self.d_state, self.n_groups = n_heads, head_dim, d_state, n_groups
        self.d_inner = n_heads * head_dim
        self.conv_dim = self.d_inner + 2 * n_groups * d_state
        self.d_conv, self.chunk_size, self.dt_limit = d_conv, chunk_size, tuple(float(v) for v in dt_limit)
        # in_proj output layout: [z (d_inner) | xBC (conv_dim) | dt (heads)]
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + n_heads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(n_heads))
        self.A_log = nn.Parameter(torch.empty(n_heads))
        self.D = nn.Parameter(torch.empty(n_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // n_groups, norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def reset_parameters(self):
        """mamba_ssm's init: A ~ U[1, 16] (stored as log), D = 1, dt_bias = softplus^-1(dt) with dt
        log-uniform in [1e-3, 1e-1]; conv as torch's default. Linear layers are the model's to set."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
            self.D.fill_(1.0)
            dt = torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)).exp().clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            self.conv1d.reset_parameters()
        self.norm.reset_parameters()

    def state_shapes(self, batch: int, max_len: int = 0) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
        """Shapes of this layer's decode state (dtype None: the model's dtype)."""
        return {
            "conv": ((batch, self.conv_dim, self.d_conv), None),
            "ssm": ((batch, self.n_heads, self.head_dim, self.d_state), SSM_STATE_DTYPE),
        }

    def discretisation(self, dt_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dt = softplus(dt_raw + dt_bias) clamped to dt_limit ((0, inf): no limit); A = -exp(A_log) (fp32).

        HF's Mamba2 clamps dt in its chunked path only; here both paths clamp (zoo::ssd_state_update does
        it for decode), so prefill and decode agree.
        """
        dt = F.softplus(dt_raw.float() + self.dt_bias.float()).clamp(*self.dt_limit)
        return dt, self.decay_rates()

    def decay_rates(self) -> torch.Tensor:
        """A = -exp(A_log), one decay rate per head, fp32."""
        return -torch.exp(self.A_log.float())

    def split_xbc(self, xbc: torch.Tensor):
        gn = self.n_groups * self.d_state
        x, B, C = xbc.split([self.d_inner, gn, gn], dim=-1)
        return (
            x.unflatten(-1, (self.n_heads, self.head_dim)),
            B.unflatten(-1, (self.n_groups, -1)),
            C.unflatten(-1, (self.n_groups, -1)),
        )

    def output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y (..., heads, head_dim) with the D skip -> gated norm -> out_proj."""
        return self.out_proj(self.norm(y.flatten(-2).to(z.dtype), z))

    def conv_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.conv1d.weight[:, 0], self.conv1d.bias  # (conv_dim, d_conv), (conv_dim,)

    def forward(self, u: torch.Tensor, lengths: torch.Tensor | None = None, state: dict | None = None):
        """u: (B, L, d). With `state` (prefill), rows are right-padded to `lengths`; the conv and SSM states
        after each row's last real token are written into state["conv"], state["ssm"]."""
        batch, L, _ = u.shape
        z, xbc, dt_raw = self.in_proj(u).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        real_lengths = torch.full((batch,), L, device=u.device) if lengths is None else lengths
        conv_out, window = causal_conv1d(xbc, *self.conv_weights(), real_lengths)
        x, B, C = self.split_xbc(conv_out)
        dt, A = self.discretisation(dt_raw)
        if lengths is not None:
            # padded positions get dt = 0: the state passes through them unchanged (zoo/ops/ssd_chunk_scan)
            real = torch.arange(L, device=u.device)[None, :] < lengths[:, None]
            dt = dt * real[..., None]
        initial_state = x.new_zeros((batch, self.n_heads, self.head_dim, self.d_state), dtype=SSM_STATE_DTYPE)
        y, final_state = ssd_chunk_scan(x, dt, A, B, C, initial_state, self.chunk_size)
        if state is not None:
            state["conv"].copy_(window)
            state["ssm"].copy_(final_state)
        y = y + x.float() * self.D.float()[:, None]  # D skip, per head, broadcast over head_dim
        return self.output(y, z)

    def decode(self, u: torch.Tensor, state: dict) -> torch.Tensor:
        """One token per row. u: (B, 1, d); state["conv"], state["ssm"] are read and updated in place."""
        z, xbc, dt_raw = self.in_proj(u[:, 0]).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        conv_out, window = causal_conv1d_update(state["conv"], xbc, *self.conv_weights())
        state["conv"].copy_(window)
        x, B, C = self.split_xbc(conv_out)
        y, new_state = ssd_state_update(
            state["ssm"], x, dt_raw, self.decay_rates(), B, C, self.D, self.dt_bias, *self.dt_limit
        )
        state["ssm"].copy_(new_state)
        return self.output(y, z)[:, None]
