"""zoo::causal_conv1d (prefill) and zoo::causal_conv1d_update (one decode step): Mamba-2's depthwise
causal conv with its bias and SiLU, the conv window (the decode state) an explicit output of both."""

import torch

from zoo.ops.causal_conv1d.cpu import causal_conv1d_cpu, causal_conv1d_update_cpu
from zoo.ops.causal_conv1d.reference import causal_conv1d_ref, causal_conv1d_update_ref
from zoo.ops.causal_conv1d.shapes import output_specs, update_output_specs
from zoo.ops.kernels import dispatch


def _triton_prefill():
    from zoo.ops.causal_conv1d.triton_kernel import causal_conv1d_triton

    return causal_conv1d_triton


def _triton_update():
    from zoo.ops.causal_conv1d.triton_kernel import causal_conv1d_update_triton

    return causal_conv1d_update_triton


def check_weights(dim, weight, bias, op):
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"{op}: weight {tuple(weight.shape)} is not (dim={dim}, kernel width)")
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"{op}: bias {tuple(bias.shape)} is not ({dim},)")


@torch.library.custom_op("zoo::causal_conv1d", mutates_args=())
def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (b, L, dim) channel-last, right-padded to lengths (b,); weight (dim, K); bias (dim,) or None
    -> y = silu(conv(x) + bias) (b, L, dim) in x's dtype, and the window after each row's last real
    position (b, dim, K): the raw inputs at [length - K, length), zeros before the start."""
    check_weights(x.shape[2], weight, bias, "causal_conv1d")
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"causal_conv1d: lengths {tuple(lengths.shape)} is not (batch={x.shape[0]},)")
    impl = dispatch(
        "causal_conv1d", x.device, reference=causal_conv1d_ref, cpu=causal_conv1d_cpu, triton=_triton_prefill
    )
    return impl(x, weight, bias, lengths)


@causal_conv1d.register_fake
def _(x, weight, bias, lengths):
    tensors = (x, weight, bias, lengths)
    specs = output_specs([_shape(t) for t in tensors], [_dtype(t) for t in tensors])
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in specs)


def _shape(t):
    return None if t is None else t.shape


def _dtype(t):
    return None if t is None else t.dtype


@torch.library.custom_op("zoo::causal_conv1d_update", mutates_args=())
def causal_conv1d_update(
    window: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """window (b, dim, K); x (b, dim) the new raw input -> y (b, dim) in x's dtype and the new window
    (shifted left by one, x in the last column) in the window's dtype."""
    check_weights(x.shape[1], weight, bias, "causal_conv1d_update")
    if window.shape != (*x.shape, weight.shape[1]):
        raise ValueError(
            f"causal_conv1d_update: window {tuple(window.shape)} is not (b, dim, K) for x {tuple(x.shape)}"
        )
    impl = dispatch(
        "causal_conv1d_update",
        x.device,
        reference=causal_conv1d_update_ref,
        cpu=causal_conv1d_update_cpu,
        triton=_triton_update,
    )
    return impl(window, x, weight, bias)


@causal_conv1d_update.register_fake
def _(window, x, weight, bias):
    tensors = (window, x, weight, bias)
    specs = update_output_specs([_shape(t) for t in tensors], [_dtype(t) for t in tensors])
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in specs)
