"""Output shapes and dtypes of the routed MoE ops from their input shapes and dtypes (plain arithmetic on
sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernels and the TensorRT
plugins both use them."""


def gate_up_output_specs(shapes, dtypes, top_k, routing, activation, gated):
    """(x (T, d), router_logits, w_gate_up (N, 2F|F, d)) -> [h (T, K, F) in x's dtype]."""
    d_expert = shapes[2][1] // 2 if gated else shapes[2][1]
    return [((shapes[0][0], top_k, d_expert), dtypes[0])]


def down_output_specs(shapes, dtypes, top_k, routing):
    """(h (T, K, F), router_logits, w_down (N, d, F)) -> [y (T, d) in h's dtype]."""
    return [((shapes[0][0], shapes[2][1]), dtypes[0])]
