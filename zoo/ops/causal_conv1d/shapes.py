"""Output shapes and dtypes of zoo::causal_conv1d and zoo::causal_conv1d_update from their input shapes
and dtypes (plain arithmetic on sizes, so ints, torch SymInts and TensorRT size expressions all work): the
fake kernels and the TensorRT plugins both use them. An absent bias has shape and dtype None."""


def output_specs(shapes, dtypes):
    """(x (b, L, dim), weight (dim, K), bias, lengths) -> [y like x, window (b, dim, K) in x's dtype]."""
    (b, L, dim), (_, K) = shapes[0], shapes[1]
    return [((b, L, dim), dtypes[0]), ((b, dim, K), dtypes[0])]


def update_output_specs(shapes, dtypes):
    """(window (b, dim, K), x (b, dim), weight, bias) -> [y like x, new window like window]."""
    return [(tuple(shapes[1]), dtypes[1]), (tuple(shapes[0]), dtypes[0])]
