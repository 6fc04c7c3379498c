"""zoo::causal_conv1d and zoo::causal_conv1d_update: Mamba-2's depthwise causal conv with SiLU, for
prefill and for one decode step, with the conv window as explicit state."""

from zoo.ops.causal_conv1d.op import causal_conv1d, causal_conv1d_update
from zoo.ops.causal_conv1d.reference import causal_conv1d_ref, causal_conv1d_update_ref

__all__ = ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_update", "causal_conv1d_update_ref"]
