"""Linear layers on CPU through oneDNN, on weights packed once into its blocked layout.

aten's fp32 linear on CPU hands the weight to BLAS, which packs it again on every call; at a decode step's
few rows that packing costs more than the product. oneDNN's matmul on a weight packed ahead of time ran
2-7x faster at 8 rows and 2x faster at 1024 (figures in docs/architecture.md). The packed copy is kept
beside the parameter it was made from and made again when that parameter's storage or version counter
changes (a new layout, an in-place update), so it never goes stale. It costs one more copy of each packed
weight's memory, so callers pack only what they read at inference (no autograd).
"""

import torch
from torch.utils.weak import WeakIdKeyDictionary

PACK_ROWS = 16  # the row count oneDNN is told to pack for; a packed weight serves any row count


def available() -> bool:
    return torch.backends.mkldnn.is_available()


def packable(weight: torch.Tensor) -> bool:
    """Whether a weight can be packed and read through oneDNN here: fp32 on CPU, read without autograd."""
    inference = not torch.is_grad_enabled() or not weight.requires_grad
    return available() and inference and weight.device.type == "cpu" and weight.dtype == torch.float32


def storage_key(tensor: torch.Tensor) -> tuple:
    """What identifies a tensor's values: identity, storage, strides and version counter (absent on tensors
    made under inference_mode, which nothing outside inference_mode can update in place)."""
    version = None if tensor.is_inference() else tensor._version
    return id(tensor), tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, version


# a tensor packed from -> {what was packed: (storage keys of the tensors it was made from, packed value)}
_packed: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _cached(sources: list[torch.Tensor], purpose: str, make):
    key = tuple(storage_key(t) for t in sources)
    entries = _packed.setdefault(sources[0], {})
    if purpose not in entries or entries[purpose][0] != key:
        with torch.no_grad():
            entries[purpose] = key, make()
    return entries[purpose][1]


def pack(weight: torch.Tensor) -> torch.Tensor:
    """weight (N, K) in oneDNN's blocked layout (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)


def packed_stack(weights: list[torch.Tensor], biases: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The packed matrix of `weights` stacked along the output axis, and their stacked biases (or None)."""

    def make():
        bias = torch.cat([b.detach() for b in biases]) if biases else None
        return pack(torch.cat([w.detach() for w in weights])), bias

    return _cached([*weights, *biases], "stack", make)


def packed_experts(weights: torch.Tensor) -> list[torch.Tensor]:
    """One packed matrix per expert of `weights` (E, N, K)."""
    return _cached([weights], "experts", lambda: [pack(w) for w in weights.detach()])


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ packed^T + bias -> (..., N)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")
