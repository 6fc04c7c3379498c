"""Output shapes and dtypes of zoo::ssd_state_update from its input shapes and dtypes (plain arithmetic
on sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT
plugin both use it."""

import torch


def output_specs(shapes, dtypes, dt_min, dt_max):
    """(state, x, dt, A, B, C, D, dt_bias) -> [y like x, new state like state], both fp32."""
    return [(tuple(shapes[1]), torch.float32), (tuple(shapes[0]), torch.float32)]
