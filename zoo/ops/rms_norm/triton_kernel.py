"""RMSNorm as one Triton program per row: fp32 statistics, the normalised row rounded to x's dtype (as
the reference does) before the weight multiplies it."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def rms_norm_kernel(x_ptr, weight_ptr, out_ptr, D, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    normed = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * D + cols, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    D = x.shape[-1]
    rows = x.reshape(-1, D).contiguous()
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if rows.shape[0]:
        rms_norm_kernel[(rows.shape[0],)](rows, weight.contiguous(), out, D, eps, BLOCK_D=triton.next_power_of_2(D))
    return out


def _spec(name: str, dtype: str) -> KernelSpec:
    signature = {"x_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "D": "i32", "eps": "fp32"}
    return KernelSpec(name, rms_norm_kernel, {**signature, "BLOCK_D": "constexpr"}, {"BLOCK_D": 4096})


TRITON_KERNELS = [_spec("rms_norm_fp32", "fp32"), _spec("rms_norm_bf16", "bf16")]
