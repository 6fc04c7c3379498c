"""Decode state as a flat dict of tensors: each layer's tensors under "<name><layer index>"."""

import torch

StateShapes = dict[str, tuple[tuple[int, ...], torch.dtype | None]]  # name -> (shape, dtype or None: model's)


def allocate(shapes: StateShapes, index: int, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    return {
        f"{name}{index}": torch.zeros(shape, dtype=d or dtype, device=device) for name, (shape, d) in shapes.items()
    }


def layer_view(state: dict[str, torch.Tensor], names: tuple[str, ...], index: int) -> dict[str, torch.Tensor]:
    """The tensors of one layer, under their short names (the same tensors: updates go through)."""
    return {name: state[f"{name}{index}"] for name in names}
