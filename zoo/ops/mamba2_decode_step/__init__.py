"""zoo::mamba2_decode_step: one Mamba-2 decode step's recurrent region (conv step, SSM state update, gated
RMSNorm) as one op, the region that zoo::causal_conv1d_update, zoo::ssd_state_update and
zoo::gated_rms_norm form in a captured decode graph."""

from zoo.ops.mamba2_decode_step.op import mamba2_decode_step
from zoo.ops.mamba2_decode_step.reference import mamba2_decode_step_ref

__all__ = ["mamba2_decode_step", "mamba2_decode_step_ref"]
