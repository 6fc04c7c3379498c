"""Per-dtype tolerances for kernels against their references (docs/ops.md)."""

import torch

# (atol, rtol) per dtype, as the project documents them
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.float16: (5e-3, 1e-2), torch.bfloat16: (1e-2, 5e-2)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, msg: str = ""):
    atol, rtol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=msg or None)
