"""Output shapes and dtypes of zoo::add_rms_norm from its input shapes and dtypes (plain arithmetic on
sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT
plugin both use it."""

import torch


def output_specs(shapes, dtypes, eps):
    """(x, residual, weight) -> [normed, sum], both x's shape; the sum in the promoted dtype of x and
    residual, normed in that of the sum and weight."""
    sum_dtype = torch.promote_types(dtypes[0], dtypes[1])
    return [(tuple(shapes[0]), torch.promote_types(sum_dtype, dtypes[2])), (tuple(shapes[0]), sum_dtype)]
