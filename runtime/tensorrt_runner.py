"""The TensorRT runner: the engines of an artifact written by `zoo export MODEL --format tensorrt`
(export/tensorrt.py), without a live nn.Module. The interface is the ONNX Runtime runner's.

Checked first, each failure one line: TensorRT is installed, there is a CUDA GPU, the artifact is whole
(export.artifact.verify: manifest format and version, the zoo ops, every file's size and sha256, the
engines' too), it is not of a model that reads images (revilm: its media graph, export/media.py, runs on
the onnxruntime backend only, so the runner refuses the artifact rather than decode with no media state),
and it holds engines (if not: the command that builds them). The config and the state
spec come from the manifest; the engines' tensors are bound by the names of the manifest's graph records
(`input_ids`, `state.k.0`, ..., `logits`, `new_state.k.0`, ...), checked against the engines' own.

Everything runs on one CUDA stream, ordered after the work torch queued on its current stream and before
what torch queues next (the stream waits both ways), so tensors pass between torch and TensorRT without a
host sync.

State buffers: as in the ONNX Runtime runner, the decode step reads one set of state buffers and writes
the twin set, and the two swap each step (ping-pong), so no state is copied between steps. The two sets
of a state shape (batch, cache length) are allocated once: `init_state` returns the first set zeroed,
so every request of those sizes reuses them (a runner serves one request at a time). A resized
compressed cache is a new shape, with new sets.

Plugins: an AOT plugin's kernel is in the engine; a plugin with a JIT implementation only (the
manifest says which) calls back into Python, so the zoo's plugins are registered before the engines load.

CUDA graphs: the decode step is captured per batch size, as two graphs (set 0 -> set 1 and the way back)
of an execution context that batch size owns, with its token, position and logits buffers; a step copies
its tokens and positions in and replays. A new cache length for a batch size rebinds its context and
captures again. The contexts share one activation buffer (user-managed device memory, the size of the
larger engine's): they never run at the same time. The prefill, whose prompt length changes per request,
is enqueued directly. The logits a step returns are the runner's buffer: valid until its next step.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runtime import state as runtime_state
from zoo.errors import ZooError
from zoo.nn.state import StateEntry

PHASES = {"prefill": ("input_ids", "lengths"), "decode": ("tokens", "positions")}


@dataclass
class DecodeGraphs:
    """The decode step of one batch size: its context, bound buffers and the two captured graphs of the
    state pair it was captured for."""

    context: object
    tokens: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor
    pair: tuple[dict, dict] | None = None
    graphs: list = field(default_factory=lambda: [None, None])


class TensorRTRunner(runtime_state.ArtifactStateHooks):
    backend = "tensorrt"
    static_shapes = False  # the engines' profiles cover ranges of batch, prompt and cache lengths

    def __init__(self, path: str | os.PathLike):
        from zoo.errors import require

        trt = require("tensorrt", "tensorrt")
        if not torch.cuda.is_available():
            raise ZooError(
                "the tensorrt backend needs a CUDA GPU and this machine has none; the artifact's ONNX graphs run "
                "on the onnxruntime backend"
            )
        from export.artifact import ArtifactError, verify
        from export.media import reads_media
        from export.tensorrt import build_command

        self.path = Path(path)
        self.manifest = verify(self.path)
        section = self.manifest.get("tensorrt")
        if section is None:
            raise ArtifactError(
                f"{self.path} is not a TensorRT export; export it with `zoo export MODEL --format tensorrt -o DIR`"
            )
        if reads_media(self.manifest):  # refused before the user builds its engines for nothing
            raise ArtifactError(
                f"{self.path} is a {self.manifest['family']} artifact: its media encoder graph runs on the "
                f"onnxruntime backend only (`zoo run {self.path}`, Engine.load(DIR, backend='onnxruntime'))"
            )
        if not section.get("engines"):
            raise ArtifactError(
                f"{self.path} holds no TensorRT engines; build them on a machine with TensorRT and a CUDA GPU: "
                f"{build_command(self.path.absolute())}"
            )
        self.config, self.dtype, self.spec = runtime_state.artifact_config(self.path, self.manifest)
        self.compressed_cache = runtime_state.is_compressed(self.spec)
        self.axes = section["axes"]
        self.prefill_cache = section["static_cache"].get("prefill")  # a prefill engine of one cache length
        self.trt = trt
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        if any(plugin["implementation"] == "jit" for plugin in section["plugins"].values()):
            from export.tensorrt import plugin_module

            plugin_module().register_plugins()  # a JIT plugin runs its Python implementation in the engine
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {}
        for phase in PHASES:
            file = self.path / section["engines"]["files"][phase]
            engine = runtime.deserialize_cuda_engine(file.read_bytes())
            if engine is None:
                raise ArtifactError(
                    f"TensorRT {trt.__version__} cannot load {file}, built by TensorRT "
                    f"{section['engines']['tensorrt_version']} (an engine runs on the version and GPU that built it): "
                    f"rebuild it with {build_command(self.path.absolute())}"
                )
            self.check_names(engine, phase)
            self.engines[phase] = engine
        size = max(engine.device_memory_size_v2 for engine in self.engines.values())
        self._activations = torch.empty(size, dtype=torch.uint8, device=self.device)
        self._prefill = self._context("prefill")
        self._prefill_inputs: tuple = ()  # the prompt tensors of the prefill in flight (kept alive until the next)
        self._prefill_logits: torch.Tensor | None = None
        self._decode: dict[int, DecodeGraphs] = {}
        self._pairs: dict[tuple, tuple[dict, dict]] = {}  # state shapes -> the two buffer sets
        self.allocations = 0  # state buffers allocated so far (reuse: flat in the number of steps and requests)

    def check_names(self, engine, phase: str) -> None:
        """The engine's I/O tensors are the manifest graph's inputs and outputs."""
        from export.artifact import ArtifactError

        graph = self.manifest["graphs"][phase]
        wanted = {r["name"] for r in graph["inputs"]} | {r["name"] for r in graph["outputs"]}
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != wanted:
            raise ArtifactError(
                f"{self.path}: the {phase} engine's tensors {sorted(names ^ wanted)} do not match its graph's"
            )

    def _context(self, phase: str):
        context = self.engines[phase].create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        context.set_device_memory(self._activations.data_ptr(), self._activations.numel())
        return context

    def prepare(self, batch: int) -> None:
        """Refuse, before any work, a batch the engines' profiles do not cover."""
        self._check_axis("batch", batch, "--max-batch")

    def _check_axis(self, axis: str, size: int, option: str) -> None:
        low, _, high = self.axes[axis]
        if not low <= size <= high:
            raise ZooError(
                f"{axis} {size} is outside the TensorRT engines' profile [{low}, {high}]; export again with {option}"
            )

    def init_state(self, batch: int, cache: int) -> dict[str, torch.Tensor]:
        """The first buffer set of (batch, cache), zeroed (allocated at the first request of those sizes). A
        prefill engine built for one cache length (export.tensorrt.tensorrt_onnx: DMC's prefill) gets a state
        of that length, which a compressed cache's manager shrinks after the prefill."""
        self._check_axis("batch", batch, "--max-batch")
        self._check_axis("cache", cache, "--max-seq")
        cache = self.prefill_cache or cache
        shapes = {e.key: e.concrete_shape(batch, cache) for e in self.spec}
        pair = self._pairs.get(self._shape_key(shapes))
        if pair is None:
            first = {e.key: self._empty(shapes[e.key], e) for e in self.spec}
            pair = self._add_pair(first)
        for tensor in pair[0].values():
            tensor.zero_()
        return dict(pair[0])

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """Enqueued directly (the prompt's shape changes per request); writes into the twin of `state`."""
        self._check_axis("prompt", input_ids.shape[1], "--max-seq")
        pair, parity = self._pair_of(state)
        outputs = pair[1 - parity]
        batch = input_ids.shape[0]
        if self._prefill_logits is None or self._prefill_logits.shape[0] != batch:
            self._prefill_logits = torch.empty(batch, self.config.vocab_size, dtype=self.dtype, device=self.device)
        self._prefill_inputs = (
            input_ids.to(self.device, torch.int64).contiguous(),
            lengths.to(self.device, torch.int64).contiguous(),
        )
        self._bind(self._prefill, "prefill", self._prefill_inputs, state, outputs, self._prefill_logits)
        self._run(lambda: self._prefill.execute_async_v3(self.stream.cuda_stream))
        return self._prefill_logits, dict(outputs)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """Copies the tokens and positions into the batch size's buffers and replays its graph for `state`."""
        pair, parity = self._pair_of(state)
        step = self._decode_graphs(tokens.shape[0], pair)
        step.tokens.copy_(tokens)
        step.positions.copy_(positions)
        if step.graphs[parity] is None:
            step.graphs[parity] = self._capture(step, parity)
        graph = step.graphs[parity]
        self._run(graph.replay)
        return step.logits, dict(pair[1 - parity])

    def resize_cache(self, state: dict[str, torch.Tensor], capacity: int) -> dict[str, torch.Tensor]:
        """New zero buffers with the old slots copied (their twin set is allocated at the next step)."""
        self._check_axis("cache", capacity, "--max-seq")
        self.allocations += sum(runtime_state.cache_axis(e) is not None for e in self.spec)
        return runtime_state.resized(state, self.spec, capacity)

    # --- buffers, bindings, graphs ------------------------------------------------------------------------

    def _empty(self, shape, entry: StateEntry) -> torch.Tensor:
        self.allocations += 1
        return torch.zeros(shape, dtype=entry.torch_dtype(self.dtype), device=self.device)

    @staticmethod
    def _shape_key(shapes: dict) -> tuple:
        return tuple(sorted((key, tuple(shape)) for key, shape in shapes.items()))

    def _add_pair(self, first: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """`first` and a twin set of its shapes, kept as the buffers of those shapes (replacing older ones)."""
        twin = {e.key: self._empty(first[e.key].shape, e) for e in self.spec}
        pair = (dict(first), twin)
        self._pairs[self._shape_key({k: t.shape for k, t in first.items()})] = pair
        return pair

    def _pair_of(self, state: dict[str, torch.Tensor]) -> tuple[tuple[dict, dict], int]:
        """The buffer pair `state` is one set of, and which (a state made elsewhere, e.g. a resized cache,
        becomes the first set of a new pair)."""
        pair = self._pairs.get(self._shape_key({k: t.shape for k, t in state.items()}))
        for parity, buffers in enumerate(pair or ()):
            if buffers.keys() == state.keys() and all(buffers[k] is t for k, t in state.items()):
                return pair, parity
        return self._add_pair(state), 0

    def _decode_graphs(self, batch: int, pair: tuple[dict, dict]) -> DecodeGraphs:
        """The batch size's decode context and buffers; its graphs dropped when `pair` is not theirs."""
        step = self._decode.get(batch)
        if step is None:
            step = DecodeGraphs(
                self._context("decode"),
                torch.zeros(batch, dtype=torch.int64, device=self.device),
                torch.zeros(batch, dtype=torch.int64, device=self.device),
                torch.empty(batch, self.config.vocab_size, dtype=self.dtype, device=self.device),
            )
            self._decode[batch] = step
        if step.pair is not pair:
            step.pair, step.graphs = pair, [None, None]
        return step

    def _capture(self, step: DecodeGraphs, parity: int):
        """The graph of one decode step from set `parity` into the other. The step is first enqueued once
        uncaptured (TensorRT does deferred per-shape work at the first enqueue after a binding change, which
        must not land in a graph); that run computes this very step, which the replay then recomputes."""
        inputs, outputs = step.pair[parity], step.pair[1 - parity]
        self._bind(step.context, "decode", (step.tokens, step.positions), inputs, outputs, step.logits)
        self._run(lambda: step.context.execute_async_v3(self.stream.cuda_stream))
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            step.context.execute_async_v3(self.stream.cuda_stream)
        return graph

    def _bind(self, context, phase: str, first: tuple, inputs: dict, outputs: dict, logits: torch.Tensor) -> None:
        """Shapes and addresses of every I/O tensor of `phase`, by the manifest's names."""
        tensors = dict(zip(PHASES[phase], first))
        for entry in self.spec:
            tensors[entry.qualified_name] = inputs[entry.key]
        for name, tensor in tensors.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise ZooError(f"the {phase} engine does not take {name} of shape {tuple(tensor.shape)}")
            context.set_tensor_address(name, tensor.data_ptr())
        context.set_tensor_address("logits", logits.data_ptr())
        for entry in self.spec:
            context.set_tensor_address(f"new_{entry.qualified_name}", outputs[entry.key].data_ptr())

    def _run(self, enqueue) -> None:
        """Enqueue TensorRT work on the runner's stream, after torch's queued work and before its next."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            if enqueue() is False:  # execute_async_v3 reports a failed enqueue (its log says why)
                raise ZooError("TensorRT failed to enqueue a step (see its log above)")
        current.wait_stream(self.stream)
