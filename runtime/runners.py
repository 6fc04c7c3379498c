"""Runners: what the engine's generation loop (runtime/engine.py) calls to run one model.

Every runner provides
- `init_state(batch, cache)`: the zero state of the state spec, a dict of tensors keyed "k0", "slots1", ...;
- `prefill(input_ids, lengths, state)` and `decode_step(tokens, positions, state)`, each -> (logits (B, V)
  as a torch tensor, the new state);
- for a compressed cache (`compressed_cache`): `cache_slots(state)` and `resize_cache(state, capacity)`,
  the hooks of runtime.state.CompressedCacheManager;
- `prepare(batch)` before each request, `state_bytes(state)` (what it holds for that state),
  `state_summary(state, positions)`, `config`, `device`, and
  `static_shapes` (the decode step is specialised per cache length, so the engine buckets cache lengths);
- optionally `encoder_decoder` (default False): prompts are encoder inputs, and the first decode step feeds
  decoder position 1 (runtime/engine.py).
- optionally `takes_media` (default False) and `encode_media(pixel_values, caption_ids, caption_lengths,
  state)` -> state: a model that reads one image (and its retrieved captions) per prompt (revilm); the
  engine calls it once per request, before prefill.

TorchRunner runs the nn.Module eagerly, CompiledRunner under torch.compile with the zoo backend;
runtime.onnxruntime_runner.OnnxRuntimeRunner and runtime.tensorrt_runner.TensorRTRunner run an exported
artifact without a live nn.Module (`artifact_runner`).
"""

import torch

from runtime.state import state_bytes
from zoo.errors import ZooError

TORCH_BACKENDS = ("torch", "compiled")
# Backends that run exported artifacts: (the module they import, the extra that installs it)
ARTIFACT_BACKENDS = {"onnxruntime": ("onnxruntime", "onnx"), "tensorrt": ("tensorrt", "tensorrt")}
BACKENDS = (*TORCH_BACKENDS, "onnxruntime")  # those that can run here (given their runtime)
WEIGHT_LAYOUTS = ("auto", "as-is", "row-major", "column-major")
# Every model of a family shares one decode_step code object, and each cache-length bucket is a graph of
# its own: Dynamo's default limit of 8 graphs per code object is too few for a process that serves
# several models or long requests.
RECOMPILE_LIMIT = 64


def check_backend(name: str, allow_artifacts: bool = False) -> None:
    """Raise an error that says why `name` cannot run a model given as an nn.Module (unknown, runtime
    missing, or a backend that runs exported artifacts, unless `allow_artifacts`: the caller exports)."""
    if name in TORCH_BACKENDS:
        return
    if name not in ARTIFACT_BACKENDS:
        raise ZooError(f"unknown backend {name!r}; known: {', '.join([*TORCH_BACKENDS, *ARTIFACT_BACKENDS])}")
    from zoo.errors import require

    module, extra = ARTIFACT_BACKENDS[name]
    require(module, extra)  # MissingDependencyError naming the extra when the runtime is not installed
    if allow_artifacts:
        return
    if name == "tensorrt":
        raise ZooError(
            "the tensorrt backend runs exported artifacts: export the model with `zoo export MODEL --format "
            "tensorrt -o DIR` and load DIR (runtime.runners.artifact_runner(DIR, 'tensorrt'))"
        )
    raise ZooError(
        f"the {name} backend runs exported artifacts: export the model with `zoo export MODEL -o DIR` and "
        f"load DIR (`zoo run DIR`, Engine.load(DIR))"
    )


def artifact_runner(path, backend: str = "onnxruntime"):
    """The runner of an exported artifact directory: runtime.onnxruntime_runner.OnnxRuntimeRunner, or
    runtime.tensorrt_runner.TensorRTRunner for a `zoo export --format tensorrt` artifact's engines."""
    if backend not in ARTIFACT_BACKENDS:
        raise ZooError(f"an artifact runs on {' or '.join(ARTIFACT_BACKENDS)}, not {backend!r}")
    if backend == "tensorrt":
        from runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(path)
    from runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path)


def set_weight_layout(model: torch.nn.Module, layout: str) -> None:
    """Re-lay every weight matrix in place: same shapes and values, row-major or transposed strides.

    Which layout streams fastest depends on the kernel that reads it: on CPU, MKL/oneDNN read a
    column-major weight faster at every batch size tried; the compiled backend's matvec rewrite
    (passes/matvec_pass.py, batch <= MAX_ROWS) wants row-major, and its oneDNN matmuls
    (passes/prepack_linear_pass.py) read packed copies of their own (figures in docs/architecture.md).
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() != 2:
                continue
            if layout == "column-major" and param.is_contiguous():
                param.data = param.data.T.contiguous().T
            elif layout == "row-major" and not param.is_contiguous():
                param.data = param.data.contiguous()


def _compile(fn, dynamic: bool):
    from passes.backend import zoo_inductor

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(fn, fullgraph=True, dynamic=dynamic, backend=zoo_inductor)


def decode_step_of(model: torch.nn.Module, backend: str):
    """model.decode_step as a backend runs it: as is ("torch"), or under torch.compile with the zoo backend
    and static shapes ("compiled"; one graph per cache size)."""
    check_backend(backend)
    return model.decode_step if backend == "torch" else _compile(model.decode_step, dynamic=False)


def prefill_of(model: torch.nn.Module, backend: str):
    """model.prefill as a backend runs it: as is ("torch"), or under torch.compile with the zoo backend and
    dynamic shapes ("compiled": one graph for every batch size and prompt length)."""
    check_backend(backend)
    return model.prefill if backend == "torch" else _compile(model.prefill, dynamic=True)


class TorchRunner:
    """The model's own prefill / decode_step, eagerly.

    weight_layout "auto" picks, per request (`prepare`), the layout the kernels read fastest on CPU
    (set_weight_layout: column-major for BLAS) and leaves weights as they are on other devices. The layout
    is applied to the model passed in (its values do not change), so runners can share one model.
    """

    backend = "torch"
    static_shapes = False

    def __init__(self, model: torch.nn.Module, weight_layout: str = "auto"):
        self._decode = decode_step_of(model, self.backend)
        self._prefill = prefill_of(model, self.backend)
        if weight_layout not in WEIGHT_LAYOUTS:
            raise ZooError(f"unknown weight layout {weight_layout!r}; available: {', '.join(WEIGHT_LAYOUTS)}")
        if weight_layout == "auto" and next(model.parameters()).device.type != "cpu":
            weight_layout = "as-is"
        self.weight_layout = weight_layout
        self.model = model.eval()
        self.config = model.config
        self.compressed_cache = getattr(model, "compressed_cache", False)
        self.encoder_decoder = getattr(model, "encoder_decoder", False)
        self.takes_media = getattr(model, "takes_media", False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def layout_for(self, batch: int) -> str:
        return self.weight_layout if self.weight_layout != "auto" else "column-major"

    def prepare(self, batch: int) -> None:
        set_weight_layout(self.model, self.layout_for(batch))

    def init_state(self, batch: int, cache: int) -> dict:
        return self.model.init_state(batch, cache)

    def prefill(self, input_ids, lengths, state):
        return self._prefill(input_ids, lengths, state)

    def decode_step(self, tokens, positions, state):
        return self._decode(tokens, positions, state)

    def encode_media(self, pixel_values, caption_ids, caption_lengths, state):
        """The media and retrieved-caption context of a request into `state`, eagerly (once per request)."""
        return self.model.encode_media(pixel_values, caption_ids, caption_lengths, state)

    def cache_slots(self, state: dict) -> tuple[int, int]:
        return self.model.cache_slots(state)

    def resize_cache(self, state: dict, capacity: int) -> dict:
        return self.model.resize_cache(state, capacity)

    def state_bytes(self, state: dict) -> int:
        """Bytes of state the runner holds while decoding with `state` (updated in place: just those)."""
        return state_bytes(state)

    def state_summary(self, state: dict, positions: torch.Tensor) -> dict:
        return self.model.state_summary(state, positions) if hasattr(self.model, "state_summary") else {}


class CompiledRunner(TorchRunner):
    """Prefill and decode step under torch.compile with the zoo backend (passes/backend.py: zoo graph passes,
    then inductor). Prefill has dynamic shapes (one graph for all prompt lengths); the decode step has static
    shapes (`static_shapes`: the engine rounds the cache length up to a bucket, so requests of similar size
    reuse one graph). Weights row-major, as the matvec rewrite (batch <= MAX_ROWS) reads them; the
    prepack pass's oneDNN matmuls read their own packed copies, so the layout stays put across batch sizes
    (a change would repack them). Without oneDNN, batches above MAX_ROWS go to BLAS: column-major."""

    backend = "compiled"
    static_shapes = True

    def layout_for(self, batch: int) -> str:
        if self.weight_layout != "auto":
            return self.weight_layout
        from passes.matvec_pass import MAX_ROWS
        from zoo.ops import onednn

        return "row-major" if batch <= MAX_ROWS or onednn.available() else "column-major"


def torch_runner(model: torch.nn.Module, backend: str = "torch", weight_layout: str = "auto") -> TorchRunner:
    """The runner of an nn.Module for `backend`; an error that says why for a backend that cannot run it."""
    check_backend(backend)
    return (CompiledRunner if backend == "compiled" else TorchRunner)(model, weight_layout)
