"""The gated RMSNorm as one Triton program per (row, group): the gate x * silu(z) and the statistics in
fp32, the normalised group rounded to x's dtype (as the reference does) before the weight multiplies it."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec


@triton.jit
def gated_rms_norm_kernel(x_ptr, z_ptr, weight_ptr, out_ptr, D, group_size, eps, BLOCK_G: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * group_size + tl.arange(0, BLOCK_G)
    mask = tl.arange(0, BLOCK_G) < group_size
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    gated = x * z * tl.sigmoid(z)
    rstd = tl.rsqrt(tl.sum(gated * gated, axis=0) / group_size + eps)
    normed = (gated * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * D + cols, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)


def gated_rms_norm_triton(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float
) -> torch.Tensor:
    D = x.shape[-1]
    x_rows, z_rows = x.reshape(-1, D).contiguous(), z.reshape(-1, D).contiguous()
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if x_rows.shape[0]:
        grid = (x_rows.shape[0], D // group_size)
        gated_rms_norm_kernel[grid](
            x_rows, z_rows, weight.contiguous(), out, D, group_size, eps, BLOCK_G=triton.next_power_of_2(group_size)
        )
    return out


def _spec(name: str, dtype: str) -> KernelSpec:
    pointers = {f"{arg}_ptr": f"*{dtype}" for arg in ("x", "z", "weight", "out")}
    signature = {**pointers, "D": "i32", "group_size": "i32", "eps": "fp32", "BLOCK_G": "constexpr"}
    return KernelSpec(name, gated_rms_norm_kernel, signature, {"BLOCK_G": 1024})


TRITON_KERNELS = [_spec("gated_rms_norm_fp32", "fp32"), _spec("gated_rms_norm_bf16", "bf16")]
