"""zoo::mamba2_decode_step: one Mamba-2 decode step from the conv window to the gated norm's output
(docs/algorithms.md §2.3), the region a region-growth pass makes of causal_conv1d_update ->
ssd_state_update -> gated_rms_norm, so a decode step's whole recurrent part is one node (one kernel)."""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.mamba2_decode_step.cpu import mamba2_decode_step_cpu
from zoo.ops.mamba2_decode_step.reference import bc_groups, mamba2_decode_step_ref
from zoo.ops.mamba2_decode_step.shapes import output_specs


def _triton():
    from zoo.ops.mamba2_decode_step.triton_kernel import mamba2_decode_step_triton

    return mamba2_decode_step_triton


def check_inputs(conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight) -> None:
    if ssm_state.dim() != 4:
        raise ValueError(f"mamba2_decode_step: ssm_state {tuple(ssm_state.shape)} is not (b, heads, head_dim, d_state)")
    b, h, p, n = ssm_state.shape
    if xbc.dim() != 2 or xbc.shape[0] != b:
        raise ValueError(f"mamba2_decode_step: xbc {tuple(xbc.shape)} is not (b={b}, conv_dim)")
    conv_dim = xbc.shape[1]
    groups = bc_groups(conv_dim, h, p, n)
    if groups < 1 or conv_dim != h * p + 2 * groups * n or h % groups:
        raise ValueError(
            f"mamba2_decode_step: xbc {tuple(xbc.shape)} is not (b, heads*head_dim + 2*groups*d_state) with a "
            f"number of groups dividing heads={h}, for ssm_state {tuple(ssm_state.shape)}"
        )
    if conv_weight.dim() != 2 or conv_weight.shape[0] != conv_dim:
        raise ValueError(f"mamba2_decode_step: conv_weight {tuple(conv_weight.shape)} is not ({conv_dim}, d_conv)")
    if conv_window.shape != (b, conv_dim, conv_weight.shape[1]):
        raise ValueError(
            f"mamba2_decode_step: conv_window {tuple(conv_window.shape)} is not "
            f"({b}, {conv_dim}, {conv_weight.shape[1]}) for xbc {tuple(xbc.shape)}"
        )
    if conv_bias is not None and conv_bias.shape != (conv_dim,):
        raise ValueError(f"mamba2_decode_step: conv_bias {tuple(conv_bias.shape)} is not ({conv_dim},)")
    if z.shape != (b, h * p) or dt.shape != (b, h):
        raise ValueError(
            f"mamba2_decode_step: z {tuple(z.shape)} / dt {tuple(dt.shape)} are not ({b}, {h * p}) / ({b}, {h}) "
            f"for ssm_state {tuple(ssm_state.shape)}"
        )
    if A.shape != (h,) or D.shape != (h,) or dt_bias.shape != (h,):
        raise ValueError(f"mamba2_decode_step: A, D and dt_bias must be ({h},), one value per head")
    if norm_weight.shape != (h * p,):
        raise ValueError(f"mamba2_decode_step: norm_weight {tuple(norm_weight.shape)} is not ({h * p},)")


@torch.library.custom_op("zoo::mamba2_decode_step", mutates_args=())
def mamba2_decode_step(
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
    """conv_window (b, conv_dim, K) and xbc (b, conv_dim) as causal_conv1d_update takes them, with
    conv_weight (conv_dim, K) and conv_bias (conv_dim,) or None; ssm_state (b, h, p, n); z (b, h*p);
    dt (b, h) raw; A, D, dt_bias (h,); norm_weight (h*p,); dt clamped to [dt_min, dt_max]; eps the norm's.
    The g = (conv_dim - h*p) / (2n) B/C groups are also the gated norm's groups (h*p/g channels each).
    Returns out (b, h*p) in the promoted dtype of z and norm_weight, the new conv window (b, conv_dim, K)
    in conv_window's dtype and the new SSM state (b, h, p, n) fp32."""
    check_inputs(conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight)
    impl = dispatch(
        "mamba2_decode_step",
        ssm_state.device,
        reference=mamba2_decode_step_ref,
        cpu=mamba2_decode_step_cpu,
        triton=_triton,
    )
    return impl(
        conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, dt_min, dt_max, eps
    )


@mamba2_decode_step.register_fake
def _(conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, dt_min, dt_max, eps):
    tensors = (conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight)
    check_inputs(*tensors)
    specs = output_specs(
        [None if t is None else t.shape for t in tensors], [None if t is None else t.dtype for t in tensors],
        dt_min=dt_min, dt_max=dt_max, eps=eps,
    )  # fmt: skip
    return tuple(ssm_state.new_empty(shape, dtype=dtype) for shape, dtype in specs)
