"""zoo::gated_rms_norm: Mamba-2's gated RMSNorm, norm(x * silu(z)) per group of channels, then * weight."""

from zoo.ops.gated_rms_norm.op import gated_rms_norm
from zoo.ops.gated_rms_norm.reference import gated_rms_norm_ref

__all__ = ["gated_rms_norm", "gated_rms_norm_ref"]
