"""Decode state as a flat dict of tensors: each layer's tensors under "<name><layer index>".

A family declares its state through its layers' `state_shapes(batch, max_len)`; `state_spec` turns them
into a serialisable list of StateEntry (name, layer, dtype, symbolic shape with the dynamic axes named
"batch" and "cache"), which allocation, capture, export and runners all read.
"""

from dataclasses import dataclass

import torch


def layer_view(state: dict[str, torch.Tensor], names: tuple[str, ...], index: int) -> dict[str, torch.Tensor]:
    """The tensors of one layer, under their short names (the same tensors: updates go through)."""
    return {name: state[f"{name}{index}"] for name in names}


DYNAMIC_AXES = ("batch", "cache")  # the symbolic sizes a state shape may hold


@dataclass(frozen=True)
class StateEntry:
    name: str  # the layer's short name: "k", "v", "conv", "ssm", "slots", ...
    layer: int
    shape: tuple[int | str, ...]  # "batch" and "cache" name the dynamic axes
    dtype: str | None  # a torch dtype name, or None: the model's dtype

    @property
    def key(self) -> str:
        """The key of this tensor in the state dict."""
        return f"{self.name}{self.layer}"

    @property
    def qualified_name(self) -> str:
        """The tensor's name in captured and exported graphs: "state.<name>.<layer>"."""
        return f"state.{self.name}.{self.layer}"

    def dynamic_axes(self) -> dict[int, str]:
        return {axis: size for axis, size in enumerate(self.shape) if isinstance(size, str)}

    def concrete_shape(self, batch: int, cache: int) -> tuple[int, ...]:
        sizes = {"batch": batch, "cache": cache}
        return tuple(sizes[s] if isinstance(s, str) else s for s in self.shape)

    def torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return model_dtype if self.dtype is None else getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        return {"name": self.name, "layer": self.layer, "key": self.key, "shape": list(self.shape), "dtype": self.dtype}


def state_spec(stateful_layers) -> list[StateEntry]:
    """The state entries of (layer index, module with state_shapes) pairs, in order."""
    spec = []
    for index, module in stateful_layers:
        for name, (shape, dtype) in module.state_shapes("batch", "cache").items():
            dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
            spec.append(StateEntry(name, index, tuple(shape), dtype_name))
    return spec


def allocate_state(spec: list[StateEntry], batch: int, cache: int, dtype: torch.dtype, device) -> dict:
    """Zero tensors for every entry of `spec`, keyed as the models read them."""
    return {e.key: torch.zeros(e.concrete_shape(batch, cache), dtype=e.torch_dtype(dtype), device=device) for e in spec}
