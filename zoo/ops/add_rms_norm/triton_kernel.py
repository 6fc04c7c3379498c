"""Residual add + RMSNorm as one Triton program per row: the sum is rounded to its dtype and stored, and
the norm reads the rounded sum (as the reference does), so both outputs match the unfused graph."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def add_rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, D, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    residual = tl.load(residual_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    total = (x + residual).to(sum_ptr.dtype.element_ty)
    tl.store(sum_ptr + row * D + cols, total, mask=mask)
    total = total.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(total * total, axis=0) / D + eps)
    normed = (total * rstd).to(sum_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * D + cols, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    sum_dtype = torch.promote_types(x.dtype, residual.dtype)
    x_rows, residual_rows = x.reshape(-1, D).contiguous(), residual.reshape(-1, D).contiguous()
    out = torch.empty(x.shape, dtype=torch.promote_types(sum_dtype, weight.dtype), device=x.device)
    total = torch.empty(x.shape, dtype=sum_dtype, device=x.device)
    if x_rows.shape[0]:
        add_rms_norm_kernel[(x_rows.shape[0],)](
            x_rows, residual_rows, weight.contiguous(), out, total, D, eps, BLOCK_D=triton.next_power_of_2(D)
        )
    return out, total


def _spec(name: str, dtype: str) -> KernelSpec:
    pointers = {f"{arg}_ptr": f"*{dtype}" for arg in ("x", "residual", "weight", "out", "sum")}
    signature = {**pointers, "D": "i32", "eps": "fp32", "BLOCK_D": "constexpr"}
    return KernelSpec(name, add_rms_norm_kernel, signature, {"BLOCK_D": 4096})


TRITON_KERNELS = [_spec("add_rms_norm_fp32", "fp32"), _spec("add_rms_norm_bf16", "bf16")]
