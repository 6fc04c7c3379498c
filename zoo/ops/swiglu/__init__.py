"""zoo::swiglu: silu(gate) * up, the elementwise half of a gated MLP."""

from zoo.ops.swiglu.op import swiglu
from zoo.ops.swiglu.reference import swiglu_ref

__all__ = ["swiglu", "swiglu_ref"]
