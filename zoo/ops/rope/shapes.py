"""Output shapes and dtypes of zoo::rope from its input shapes and dtypes (plain arithmetic on sizes, so
ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT plugin both
use it."""

import torch


def output_specs(shapes, dtypes):
    """(x, cos, sin) -> [(x's shape, promoted dtype of the three)]."""
    return [(tuple(shapes[0]), torch.promote_types(torch.promote_types(dtypes[0], dtypes[1]), dtypes[2]))]
