"""The activation of GatedMLP (zoo/nn/mlp.py): silu(gate) * up. silu is computed in fp32 and rounded to
gate's dtype (as F.silu does for fp16/bf16), then multiplied by up."""

import torch
import torch.nn.functional as F


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up (..., F) -> (..., F)."""
    return F.silu(gate) * up
