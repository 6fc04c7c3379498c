"""silu(gate) * up as a flat elementwise Triton kernel; silu is rounded to gate's dtype before the
product, as in the reference."""

import torch
import triton
import triton.language as tl

from zoo.ops.triton_aot import KernelSpec

BLOCK = 1024


@triton.jit
def swiglu_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    silu = (gate * tl.sigmoid(gate)).to(gate_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + offsets, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    n = gate.numel()
    if n:
        swiglu_kernel[(triton.cdiv(n, BLOCK),)](gate, up, out, n, BLOCK=BLOCK)
    return out


def _spec(name: str, dtype: str) -> KernelSpec:
    signature = {"gate_ptr": f"*{dtype}", "up_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "n": "i64"}
    return KernelSpec(name, swiglu_kernel, {**signature, "BLOCK": "constexpr"}, {"BLOCK": BLOCK})


TRITON_KERNELS = [_spec("swiglu_fp32", "fp32"), _spec("swiglu_bf16", "bf16")]
