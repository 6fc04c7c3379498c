"""Output shapes and dtypes of zoo::mamba2_decode_step from its input shapes and dtypes (plain arithmetic on
sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT
plugin both use it."""

import torch


def output_specs(shapes, dtypes, dt_min, dt_max, eps):
    """(conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight) ->
    [out like z in z's and norm_weight's promoted dtype, new window like conv_window, new state fp32]."""
    window, state, z = shapes[0], shapes[1], shapes[3]
    out_dtype = torch.promote_types(dtypes[3], dtypes[10])
    return [(tuple(z), out_dtype), (tuple(window), dtypes[0]), (tuple(state), torch.float32)]
