"""The causal conv1d as Triton kernels: prefill (one program per (batch, block of positions, block of
channels), K taps unrolled; the programs of the first block of positions also store the window after
each row's length, so prefill is one launch), and the decode step (one program per (batch, block of
channels), the window loaded as a (channels, K) tile)."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def causal_conv1d_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    lengths_ptr,
    y_ptr,
    window_ptr,
    L,
    DIM,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        t = offs_t - (K - 1) + k
        mask = ((t >= 0) & (t < L))[:, None] & mask_d[None, :]
        inputs = tl.load(x_ptr + (batch * L + t)[:, None] * DIM + offs_d[None, :], mask=mask, other=0.0)
        acc += inputs.to(tl.float32) * tl.load(weight_ptr + offs_d * K + k, mask=mask_d, other=0.0).to(tl.float32)
    y = acc / (1.0 + tl.exp(-acc))  # SiLU
    mask = (offs_t < L)[:, None] & mask_d[None, :]
    tl.store(y_ptr + (batch * L + offs_t)[:, None] * DIM + offs_d[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    if tl.program_id(1) == 0:  # the window: the raw inputs at positions [length - K, length), zeros before 0
        offs_k = tl.arange(0, BLOCK_K)
        window_t = tl.load(lengths_ptr + batch) - K + offs_k
        window_mask = (window_t >= 0)[None, :] & (offs_k < K)[None, :] & mask_d[:, None]
        window_at = x_ptr + (batch * L + window_t)[None, :] * DIM + offs_d[:, None]
        window = tl.load(window_at, mask=window_mask, other=0.0)
        store_mask = (offs_k < K)[None, :] & mask_d[:, None]
        tl.store(window_ptr + (batch * DIM + offs_d)[:, None] * K + offs_k[None, :], window, mask=store_mask)


@triton.jit
def causal_conv1d_update_kernel(
    window_ptr,
    x_ptr,
    weight_ptr,
    bias_ptr,
    y_ptr,
    new_window_ptr,
    DIM,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    mask_d = offs_d < DIM
    tile_mask = mask_d[:, None] & (offs_k < K)[None, :]
    row = (batch * DIM + offs_d)[:, None] * K
    older = tl.load(window_ptr + row + offs_k[None, :] + 1, mask=mask_d[:, None] & (offs_k < K - 1)[None, :], other=0.0)
    newest = tl.load(x_ptr + batch * DIM + offs_d, mask=mask_d, other=0.0)
    window = tl.where((offs_k == K - 1)[None, :], newest.to(tl.float32)[:, None], older.to(tl.float32))
    weight = tl.load(weight_ptr + offs_d[:, None] * K + offs_k[None, :], mask=tile_mask, other=0.0).to(tl.float32)
    acc = tl.sum(window * weight, axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    y = acc / (1.0 + tl.exp(-acc))  # SiLU
    tl.store(y_ptr + batch * DIM + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    tl.store(new_window_ptr + row + offs_k[None, :], window.to(new_window_ptr.dtype.element_ty), mask=tile_mask)


BLOCK_L, BLOCK_D = 16, 64


def causal_conv1d_triton(x, weight, bias, lengths):
    b, L, dim = x.shape
    K = weight.shape[1]
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    window = x.new_empty(b, dim, K)
    has_bias = bias is not None
    grid = (b, triton.cdiv(L, BLOCK_L), triton.cdiv(dim, BLOCK_D))
    causal_conv1d_kernel[grid](
        x,
        weight,
        bias.contiguous() if has_bias else weight,
        lengths.contiguous(),
        y,
        window,
        L,
        dim,
        K,
        has_bias,
        BLOCK_L,
        BLOCK_D,
        triton.next_power_of_2(K),
    )
    return y, window


def causal_conv1d_update_triton(window, x, weight, bias):
    b, dim, K = window.shape
    y = torch.empty_like(x)
    new_window = torch.empty_like(window)
    has_bias = bias is not None
    causal_conv1d_update_kernel[(b, triton.cdiv(dim, BLOCK_D))](
        window.contiguous(),
        x.contiguous(),
        weight.contiguous(),
        bias.contiguous() if has_bias else weight,
        y,
        new_window,
        dim,
        K,
        has_bias,
        triton.next_power_of_2(K),
        BLOCK_D,
    )
    return y, new_window


TRITON_KERNELS = [
    KernelSpec(
        name="causal_conv1d",
        fn=causal_conv1d_kernel,
        signature={
            **dict.fromkeys(["x_ptr", "weight_ptr", "bias_ptr"], "*fp32"),
            "lengths_ptr": "*i64",
            **dict.fromkeys(["y_ptr", "window_ptr"], "*fp32"),
            **dict.fromkeys(["L", "DIM"], "i32"),
            **dict.fromkeys(["K", "HAS_BIAS", "BLOCK_L", "BLOCK_D", "BLOCK_K"], "constexpr"),
        },
        constexprs={"K": 4, "HAS_BIAS": True, "BLOCK_L": BLOCK_L, "BLOCK_D": BLOCK_D, "BLOCK_K": 4},
    ),
    KernelSpec(
        name="causal_conv1d_update",
        fn=causal_conv1d_update_kernel,
        signature={
            **dict.fromkeys(["window_ptr", "x_ptr", "weight_ptr", "bias_ptr", "y_ptr", "new_window_ptr"], "*fp32"),
            "DIM": "i32",
            **dict.fromkeys(["K", "HAS_BIAS", "BLOCK_K", "BLOCK_D"], "constexpr"),
        },
        constexprs={"K": 4, "HAS_BIAS": True, "BLOCK_K": 4, "BLOCK_D": BLOCK_D},
    ),
]
