"""Output shapes and dtypes of zoo::swiglu from its input shapes and dtypes (plain arithmetic on sizes,
so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT plugin
both use it."""

import torch


def output_specs(shapes, dtypes):
    """(gate, up) -> [(gate's shape, promoted dtype)]."""
    return [(tuple(shapes[0]), torch.promote_types(dtypes[0], dtypes[1]))]
