"""Output shapes and dtypes of zoo::ssd_chunk_scan from its input shapes and dtypes (plain arithmetic on
sizes, so ints, torch SymInts and TensorRT size expressions all work): the fake kernel and the TensorRT
plugin both use it."""

import torch


def output_specs(shapes, dtypes, chunk_size):
    """(x (b, L, h, p), dt, A, B (b, L, g, n), C, initial_state) -> [y (b, L, h, p), state (b, h, p, n)], fp32."""
    (b, L, h, p), n = shapes[0], shapes[3][3]
    return [((b, L, h, p), torch.float32), ((b, h, p, n), torch.float32)]
