"""zoo::rope: rotary position embedding in the rotate-half form, x * cos + rotate_half(x) * sin."""

from zoo.ops.rope.op import rope
from zoo.ops.rope.reference import rope_ref, rotate_half

__all__ = ["rope", "rope_ref", "rotate_half"]
