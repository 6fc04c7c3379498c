"""zoo::ssd_state_update: one Mamba-2 decode step (docs/algorithms.md §2.3), from the raw dt to y with
the D skip, so the whole recurrent region of a decode step is one node (one kernel)."""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.ssd_state_update.cpu import ssd_state_update_cpu
from zoo.ops.ssd_state_update.reference import ssd_state_update_ref
from zoo.ops.ssd_state_update.shapes import output_specs


def _triton():
    from zoo.ops.ssd_state_update.triton_kernel import ssd_state_update_triton

    return ssd_state_update_triton


def check_inputs(state, x, dt, A, B, C, D, dt_bias):
    b, h, p, n = state.shape
    if x.shape != (b, h, p) or dt.shape != (b, h):
        raise ValueError(
            f"ssd_state_update: x {tuple(x.shape)} / dt {tuple(dt.shape)} do not fit state {tuple(state.shape)}"
        )
    if A.shape != (h,) or D.shape != (h,) or dt_bias.shape != (h,):
        raise ValueError(f"ssd_state_update: A, D and dt_bias must be ({h},), one value per head")
    if B.shape != C.shape or B.shape[0] != b or B.shape[2] != n or h % B.shape[1]:
        raise ValueError(
            f"ssd_state_update: B {tuple(B.shape)} / C {tuple(C.shape)} do not fit state {tuple(state.shape)}"
        )


@torch.library.custom_op("zoo::ssd_state_update", mutates_args=())
def ssd_state_update(
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
    """state (b, h, p, n); x (b, h, p); dt (b, h) raw (before dt_bias and softplus); A, D, dt_bias (h,);
    B, C (b, g, n); dt is clamped to [dt_min, dt_max] (0 and inf for no limit).
    Returns y (b, h, p) fp32 with the D skip and the new state (b, h, p, n) fp32."""
    check_inputs(state, x, dt, A, B, C, D, dt_bias)
    impl = dispatch(
        "ssd_state_update", state.device, reference=ssd_state_update_ref, cpu=ssd_state_update_cpu, triton=_triton
    )
    return impl(state, x, dt, A, B, C, D, dt_bias, dt_min, dt_max)


@ssd_state_update.register_fake
def _(state, x, dt, A, B, C, D, dt_bias, dt_min, dt_max):
    tensors = (state, x, dt, A, B, C, D, dt_bias)
    specs = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], dt_min=dt_min, dt_max=dt_max)
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in specs)
