"""Output shapes and dtypes of zoo::moe_layer from its input shapes and dtypes (plain arithmetic on sizes,
so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT plugin
both use it."""


def output_specs(shapes, dtypes, top_k, routing, activation, gated):
    """(x (T, d), router_weight, w_gate_up, w_down) -> [y like x]: the shape does not depend on the routing."""
    return [(tuple(shapes[0]), dtypes[0])]
