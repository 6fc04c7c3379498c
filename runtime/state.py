"""Runtime state: allocation from a state spec, and the capacity manager of a compressed cache.

A runner's state is a dict of tensors keyed as the state spec says (zoo/nn/state.py: "k0", "slots1", ...).
A compressed cache (DMC: fewer slots than tokens) is sized by the slots it holds, not by the tokens: the
prefill gets room for the whole prompt, the cache is then cut to the slots in use plus headroom, and it grows
by half whenever a head fills it (compressed_capacity). CompressedCacheManager applies that policy through
any runner's `cache_slots(state)` and `resize_cache(state, capacity)`; `slots_in_use` and `resized` are
those hooks for a runner that knows only the state spec (an exported artifact).
"""

import torch

from zoo.nn.state import StateEntry

SLOTS = "slots"  # the state entry a compressed cache counts its slots in use with, per (row, KV head)


def compressed_capacity(in_use: int, capacity: int, limit: int, bucket: int, after_prefill: bool = False) -> int:
    """The slot capacity a compressed cache should have when its fullest head holds `in_use` slots: after
    the prefill, the slots in use plus one; later, unchanged while a slot is free, else half as large
    again. Rounded up to a multiple of `bucket`; never more than `limit` (prompt + new tokens, which always
    fit)."""
    if after_prefill:
        wanted = in_use + 1
    elif in_use < capacity:
        return capacity
    else:
        wanted = max(in_use + 1, capacity * 3 // 2)
    return min(-(-wanted // bucket) * bucket, limit)


class CompressedCacheManager:
    """Keeps a runner's compressed cache at compressed_capacity; `limit` is the most slots it may need."""

    def __init__(self, runner, limit: int, bucket: int):
        self.runner, self.limit, self.bucket = runner, limit, bucket

    def fit(self, state: dict, after_prefill: bool = False) -> dict:
        """The state with the capacity the policy wants (resized, a copy, only when the capacity changes)."""
        in_use, capacity = self.runner.cache_slots(state)
        wanted = compressed_capacity(in_use, capacity, self.limit, self.bucket, after_prefill)
        return state if wanted == capacity else self.runner.resize_cache(state, wanted)


def is_compressed(spec: list[StateEntry]) -> bool:
    return any(entry.name == SLOTS for entry in spec)


def cache_axis(entry: StateEntry) -> int | None:
    return entry.shape.index("cache") if "cache" in entry.shape else None


def slots_in_use(state: dict[str, torch.Tensor], spec: list[StateEntry]) -> tuple[int, int]:
    """(slots held by the fullest head over all layers, slot capacity per head), from the `slots` tensors."""
    used = torch.stack([state[e.key].max() for e in spec if e.name == SLOTS]).max()
    capacity = next(state[e.key].shape[cache_axis(e)] for e in spec if cache_axis(e) is not None)
    return int(used), capacity  # one device sync


def resized(state: dict[str, torch.Tensor], spec: list[StateEntry], capacity: int, allocate=torch.zeros) -> dict:
    """The state with `capacity` along every cache axis: new buffers from `allocate(shape, dtype, device)`,
    the old slots copied (the slots past the capacity dropped: the caller keeps capacity >= slots in use)."""
    new_state = dict(state)
    for entry in spec:
        axis = cache_axis(entry)
        if axis is None:
            continue
        old = state[entry.key]
        shape = (*old.shape[:axis], capacity, *old.shape[axis + 1 :])
        new = allocate(shape, dtype=old.dtype, device=old.device)
        kept = min(capacity, old.shape[axis])
        new.narrow(axis, 0, kept).copy_(old.narrow(axis, 0, kept))
        new_state[entry.key] = new
    return new_state


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.nbytes for t in state.values())


def artifact_config(path, manifest: dict):
    """(config, dtype, state spec) of an exported artifact's manifest (the runners of artifacts read them
    from it: they have no nn.Module)."""
    from export.artifact import ArtifactError
    from zoo.registry import FAMILIES

    family = FAMILIES.get(manifest["family"])
    if family is None:
        raise ArtifactError(f"{path}: unknown family {manifest['family']!r}; known: {', '.join(FAMILIES)}")
    try:
        config = family.config_cls.from_dict(manifest["config"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: bad {family.name} config in the manifest: {exc}") from exc
    spec = [
        StateEntry(r["state"]["name"], r["state"]["layer"], tuple(r["state"]["shape"]), r["state"]["dtype"])
        for r in manifest["graphs"]["decode"]["inputs"]
        if r["state"] is not None
    ]
    return config, getattr(torch, manifest["dtype"]), spec


class ArtifactStateHooks:
    """The state hooks of a runner of an exported artifact (no nn.Module: its state spec `self.spec`, its
    config `self.config`, `self.compressed_cache`, `self.manifest`), whose decode step writes a twin set of
    buffers."""

    @property
    def encoder_decoder(self) -> bool:
        """Prompts are encoder inputs (t5), as the manifest records (artifacts written before the field: no)."""
        return bool(self.manifest.get("encoder_decoder", False))

    def cache_slots(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        return slots_in_use(state, self.spec)

    def state_bytes(self, state: dict[str, torch.Tensor]) -> int:
        """The state and the twin set the next step writes into."""
        return 2 * state_bytes(state)

    def state_summary(self, state: dict[str, torch.Tensor], positions: torch.Tensor) -> dict:
        if not self.compressed_cache:
            return {}
        from zoo.nn.dmc import compression_ratios

        return {"compression": compression_ratios(state, positions, self.config.n_layers)}
