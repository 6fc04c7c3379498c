"""RoPE as one Triton program per row of D channels. Inputs are read through their strides (padded to
4-D), so q/k in (B, H, L, D) views of a (B, L, H, D) projection and cos/sin broadcast over heads are read
in place without copies. In fp32: out[:h] = x1 cos1 - x2 sin1, out[h:] = x2 cos2 + x1 sin2."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec

MAX_DIMS = 4


@triton.jit
def rope_kernel(
    x_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    size1,
    size2,
    x_s0,
    x_s1,
    x_s2,
    cos_s0,
    cos_s1,
    cos_s2,
    sin_s0,
    sin_s1,
    sin_s2,
    half,
    BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    i0, i1, i2 = row // (size1 * size2), (row // size2) % size1, row % size2
    cols = tl.arange(0, BLOCK_H)
    mask = cols < half
    x_row = x_ptr + i0 * x_s0 + i1 * x_s1 + i2 * x_s2 + cols
    cos_row = cos_ptr + i0 * cos_s0 + i1 * cos_s1 + i2 * cos_s2 + cols
    sin_row = sin_ptr + i0 * sin_s0 + i1 * sin_s1 + i2 * sin_s2 + cols
    x1 = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half, mask=mask, other=0.0).to(tl.float32)
    cos1 = tl.load(cos_row, mask=mask, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_row + half, mask=mask, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_row, mask=mask, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_row + half, mask=mask, other=0.0).to(tl.float32)
    out_row = out_ptr + row * 2 * half + cols
    tl.store(out_row, (x1 * cos1 - x2 * sin1).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_row + half, (x2 * cos2 + x1 * sin2).to(out_ptr.dtype.element_ty), mask=mask)


def _as_4d(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """t broadcast to `shape` (stride 0 on broadcast dims), with leading size-1 dims up to 4-D and unit
    stride on the channel dim."""
    t = t.expand(shape)
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape((1,) * (MAX_DIMS - t.dim()) + tuple(shape))


def rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if x.dim() > MAX_DIMS:
        raise ValueError(f"rope: the triton kernel takes x of at most {MAX_DIMS} dims, got {tuple(x.shape)}")
    x4, cos4, sin4 = (_as_4d(t, x.shape) for t in (x, cos, sin))
    dtype = torch.promote_types(torch.promote_types(x.dtype, cos.dtype), sin.dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    rows = x4.shape[0] * x4.shape[1] * x4.shape[2]
    if rows and x.shape[-1]:
        half = x.shape[-1] // 2
        strides = [s for t in (x4, cos4, sin4) for s in t.stride()[:3]]
        rope_kernel[(rows,)](
            x4, cos4, sin4, out, x4.shape[1], x4.shape[2], *strides, half, BLOCK_H=triton.next_power_of_2(half)
        )
    return out


def _spec(name: str, dtype: str) -> KernelSpec:
    pointers = {f"{arg}_ptr": f"*{dtype}" for arg in ("x", "cos", "sin", "out")}
    strides = {f"{t}_s{i}": "i64" for t in ("x", "cos", "sin") for i in range(3)}
    signature = {**pointers, "size1": "i64", "size2": "i64", **strides, "half": "i32", "BLOCK_H": "constexpr"}
    return KernelSpec(name, rope_kernel, signature, {"BLOCK_H": 64})


TRITON_KERNELS = [_spec("rope_fp32", "fp32"), _spec("rope_bf16", "bf16")]
