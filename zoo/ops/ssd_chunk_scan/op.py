"""zoo::ssd_chunk_scan: the Mamba-2 prefill scan (docs/algorithms.md §2.2), one node per layer.

The padding to whole chunks happens inside the op, so a captured graph does not depend on the number of
chunks: one program serves every prompt length, one token included.
"""

import torch

from zoo.ops.kernels import dispatch
from zoo.ops.ssd_chunk_scan.cpu import ssd_chunk_scan_cpu
from zoo.ops.ssd_chunk_scan.reference import ssd_chunk_scan_ref
from zoo.ops.ssd_chunk_scan.shapes import output_specs


def _triton():
    from zoo.ops.ssd_chunk_scan.triton_kernel import ssd_chunk_scan_triton

    return ssd_chunk_scan_triton


def check_inputs(x, dt, A, B, C, initial_state, chunk_size):
    b, L, h, p = x.shape
    if dt.shape != (b, L, h) or A.shape != (h,):
        raise ValueError(f"ssd_chunk_scan: dt {tuple(dt.shape)} / A {tuple(A.shape)} do not fit x {tuple(x.shape)}")
    if B.shape != C.shape or B.shape[:2] != (b, L) or h % B.shape[2]:
        raise ValueError(f"ssd_chunk_scan: B {tuple(B.shape)} / C {tuple(C.shape)} do not fit x {tuple(x.shape)}")
    if initial_state.shape != (b, h, p, B.shape[3]):
        raise ValueError(f"ssd_chunk_scan: initial_state {tuple(initial_state.shape)} is not (b, h, p, n)")
    if chunk_size < 1:
        raise ValueError(f"ssd_chunk_scan: chunk_size must be positive, got {chunk_size}")


@torch.library.custom_op("zoo::ssd_chunk_scan", mutates_args=())
def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (b, L, h, p); dt (b, L, h) after softplus; A (h,); B, C (b, L, g, n); initial_state (b, h, p, n)
    (zeros for none) -> y (b, L, h, p) fp32 without the D skip, final state (b, h, p, n) fp32."""
    check_inputs(x, dt, A, B, C, initial_state, chunk_size)
    impl = dispatch("ssd_chunk_scan", x.device, reference=ssd_chunk_scan_ref, cpu=ssd_chunk_scan_cpu, triton=_triton)
    return impl(x, dt, A, B, C, initial_state, chunk_size)


@ssd_chunk_scan.register_fake
def _(x, dt, A, B, C, initial_state, chunk_size):
    check_inputs(x, dt, A, B, C, initial_state, chunk_size)
    tensors = (x, dt, A, B, C, initial_state)
    specs = output_specs([t.shape for t in tensors], [t.dtype for t in tensors], chunk_size=chunk_size)
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in specs)
