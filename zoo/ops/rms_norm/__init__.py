"""zoo::rms_norm: RMSNorm with fp32 statistics, the result cast back to the input dtype, then * weight."""

from zoo.ops.rms_norm.op import rms_norm
from zoo.ops.rms_norm.reference import rms_norm_ref

__all__ = ["rms_norm", "rms_norm_ref"]
