"""zoo::add_rms_norm: the residual add and the RMSNorm that follows it, as one op returning both."""

from zoo.ops.add_rms_norm.op import add_rms_norm
from zoo.ops.add_rms_norm.reference import add_rms_norm_ref

__all__ = ["add_rms_norm", "add_rms_norm_ref"]
