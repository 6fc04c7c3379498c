"""The ONNX Runtime runner: an exported artifact's prefill.onnx and decode.onnx, without a live nn.Module.

The artifact is checked first (export.artifact.verify: manifest format and version, the zoo ops it names,
every file's size and sha256). The config and the state spec come from the manifest. Sessions run on the
CUDA execution provider when onnxruntime-gpu and a GPU are present, else on the CPU provider.

State buffers and IO binding. The state is a dict of torch tensors (keyed as the state spec says, so the
engine's loop and the compressed-cache manager treat every runner alike), bound to the sessions by pointer
with `session.io_binding()` (a torch tensor's memory, on CPU or CUDA, rather than an OrtValue ORT
allocates). The decode step's new_state outputs go to a second set of buffers of the same shapes, and the
two sets swap after each step (ping-pong); both directions are bound once, as two IOBindings, so a step
only copies its tokens and positions into their bound (batch,) buffers and runs. So:
- not copied: no state tensor is allocated, copied host<->device or copied from an output back into an
  input between steps; ONNX Runtime writes each new_state output, and the logits, straight into buffers
  allocated once per batch and cache size (again when a compressed cache is resized), which the runner
  keeps for the next request of those sizes;
- copied: inside the graph, a step computes each new state tensor whole (an ONNX graph cannot update its
  input in place, so a KV cache's ScatterND writes the whole cache into the output buffer: memory traffic
  proportional to the cache); the tokens and positions (B int64 each) into their buffers; the prompt,
  whose shape changes per request, is bound afresh at each prefill.
The logits returned by a step are the runner's buffer: valid until its next step.

Media (revilm): an artifact of a model that reads images holds media.onnx (export/media.py), which the
runner checks against the manifest (export.media.media_section: an artifact of such a model without it is
refused) and loads as a third session. `encode_media` binds the request's pixels and captions and the
state buffers of `init_state` as the media graph's outputs, so ONNX Runtime writes the media and caption
keys and values straight into the state prefill then reads; `embed_image` and `embedding_model_id` are
what runtime/retrieval.py needs to search an image index for the artifact.
"""

import os
from pathlib import Path

import torch

from export.media import EMBEDDING, INPUT_NAMES, MEDIA_STATE_PREFIXES
from runtime import state as runtime_state
from zoo.errors import ZooError
from zoo.models.revilm.model import no_captions
from zoo.nn.state import allocate_state

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
PHASES = {"prefill": ("input_ids", "lengths"), "decode": ("tokens", "positions")}
MEDIA = "media"  # the session of the media graph (export/media.py), for an artifact that has one


def numpy_dtype(dtype: torch.dtype):
    """The numpy scalar type IO binding names a torch dtype's element type with."""
    if dtype == torch.bfloat16:
        raise ZooError("the onnxruntime runner binds buffers by numpy element type, which has no bfloat16")
    return torch.empty((), dtype=dtype).numpy().dtype.type


def pick_provider(ort) -> str:
    return (
        CUDA_PROVIDER if CUDA_PROVIDER in ort.get_available_providers() and torch.cuda.is_available() else CPU_PROVIDER
    )


class OnnxRuntimeRunner(runtime_state.ArtifactStateHooks):
    backend = "onnxruntime"
    static_shapes = False  # the graphs have dynamic batch, prompt and cache axes

    def __init__(self, path: str | os.PathLike, provider: str | None = None):
        from zoo.errors import require

        ort = require("onnxruntime", "onnx")
        from export.artifact import ArtifactError, verify
        from export.media import media_section

        self.path = Path(path)
        self.manifest = verify(self.path)
        self.config, self.dtype, self.spec = runtime_state.artifact_config(self.path, self.manifest)
        self.media = media_section(self.path, self.manifest, self.spec)
        self.takes_media = self.media is not None
        for phase, first in PHASES.items():
            names = [record["name"] for record in self.manifest["graphs"].get(phase, {}).get("inputs", [])]
            if names[:2] != list(first):
                raise ArtifactError(f"{self.path}: the manifest's {phase} graph does not take {', '.join(first)}")
        self.compressed_cache = runtime_state.is_compressed(self.spec)
        self.provider = provider or pick_provider(ort)
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if self.provider == CUDA_PROVIDER else torch.device("cpu")
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about unused initializers and the like
        self.sessions = {}
        files = {phase: self.manifest["graphs"][phase]["file"] for phase in PHASES}
        if self.takes_media:
            files[MEDIA] = self.media["file"]
        for phase, name in files.items():
            file = self.path / name
            try:
                self.sessions[phase] = ort.InferenceSession(str(file), options, providers=[self.provider])
            except Exception as exc:  # ORT raises several kinds (Fail, InvalidGraph, ...): report one line
                raise ArtifactError(f"ONNX Runtime cannot load {file}: {str(exc).strip().splitlines()[0]}") from exc
        self._spare: dict[str, torch.Tensor] = {}  # the buffers the next step writes its new state into
        self._logits: torch.Tensor | None = None  # with _tokens, _positions: the bound per-batch buffers
        self._pair: tuple[dict, ...] = ()  # the two state buffer sets the decode bindings swap between
        self._decode_bindings: list = []  # [reads _pair[0] writes _pair[1], the other way round]
        self.allocations = 0  # state buffers allocated so far (IO binding reuse: flat in the number of steps)

    def prepare(self, batch: int) -> None:
        pass  # the session's graph optimisations fixed the weight layout at load

    def init_state(self, batch: int, cache: int) -> dict[str, torch.Tensor]:
        self.allocations += len(self.spec)
        return allocate_state(self.spec, batch, cache, self.dtype, self.device)

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """Bound afresh each call (the prompt's shape changes per request); writes into the twin of `state`."""
        outputs = self._twin(state)
        batch = input_ids.shape[0]
        self._step_buffers(batch)
        binding = self.sessions["prefill"].io_binding()
        self._bind_input(binding, "input_ids", input_ids.to(self.device, torch.int64).contiguous())
        self._bind_input(binding, "lengths", lengths.to(self.device, torch.int64).contiguous())
        self._bind_state(binding, state, outputs)
        self._run("prefill", binding)
        self._spare = dict(state)
        return self._logits, dict(outputs)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """Per step only tokens and positions are copied in: the bindings of the two buffer sets are kept."""
        parity = self._decode_parity(state)
        self._tokens.copy_(tokens)
        self._positions.copy_(positions)
        self._run("decode", self._decode_bindings[parity])
        self._spare = dict(state)
        return self._logits, dict(self._pair[1 - parity])

    def encode_media(self, pixel_values, caption_ids, caption_lengths, state: dict[str, torch.Tensor]):
        """The media graph on one image per row (B, 3, S, S) and its retrieved captions (B, K, Lc) / (B, K)
        (None: an empty retrieval context), its outputs written into `state`'s media and caption buffers."""
        if caption_ids is None:
            caption_ids, caption_lengths = no_captions(self.config, pixel_values.shape[0], self.device)
        outputs = {e.qualified_name: state[e.key] for e in self.spec if e.name.startswith(MEDIA_STATE_PREFIXES)}
        self._run_media(pixel_values, caption_ids, caption_lengths, outputs)
        return state

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The unit-norm image embedding (B, E) the retriever searches with: the media graph's first output."""
        width = next(r["shape"][1] for r in self.media["outputs"] if r["name"] == EMBEDDING)
        embedding = torch.empty(pixel_values.shape[0], width, dtype=torch.float32, device=self.device)
        captions = no_captions(self.config, pixel_values.shape[0], self.device)
        self._run_media(pixel_values, *captions, {EMBEDDING: embedding})
        return embedding

    def embedding_model_id(self) -> str:
        """The id of the torch model's image embedding, as the export recorded it (an index built from that
        model is recognised for this artifact)."""
        return self.media["embedding_model_id"]

    def _run_media(self, pixel_values, caption_ids, caption_lengths, outputs: dict[str, torch.Tensor]) -> None:
        """Run the media graph into the buffers `outputs` (graph name -> tensor; the other outputs are not
        fetched)."""
        binding = self.sessions[MEDIA].io_binding()
        inputs = (  # bound by pointer: held here until the run
            pixel_values.to(self.device, self.dtype).contiguous(),
            caption_ids.to(self.device, torch.int64).contiguous(),
            caption_lengths.to(self.device, torch.int64).contiguous(),
        )
        for name, tensor in zip(INPUT_NAMES, inputs, strict=True):
            self._bind_input(binding, name, tensor)
        for name, tensor in outputs.items():
            self._bind_buffer(binding.bind_output, name, tensor)
        self._run(MEDIA, binding)

    def resize_cache(self, state: dict[str, torch.Tensor], capacity: int) -> dict[str, torch.Tensor]:
        """New zero buffers with the old slots copied (the spare set follows at the next step)."""
        self.allocations += sum(runtime_state.cache_axis(e) is not None for e in self.spec)
        return runtime_state.resized(state, self.spec, capacity)

    def _twin(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Output buffers shaped like `state` and distinct from it: the last step's inputs, reallocated only
        when a shape changed (a new batch or cache size, a resized cache)."""
        for key, tensor in state.items():
            spare = self._spare.get(key)
            if spare is None or spare.shape != tensor.shape or spare.data_ptr() == tensor.data_ptr():
                self._spare[key] = torch.empty_like(tensor)
                self.allocations += 1
        return self._spare

    def _step_buffers(self, batch: int) -> None:
        """The tokens / positions inputs and the logits output of a batch (kept while the batch is)."""
        if self._logits is None or self._logits.shape[0] != batch:
            self._logits = torch.empty(batch, self.config.vocab_size, dtype=self.dtype, device=self.device)
            self._tokens = torch.zeros(batch, dtype=torch.int64, device=self.device)
            self._positions = torch.zeros(batch, dtype=torch.int64, device=self.device)
            self._pair = ()

    def _decode_parity(self, state: dict[str, torch.Tensor]) -> int:
        """Which of the two bound buffer sets `state` is (0 or 1); a new pair, bound both ways, if neither."""
        for parity, buffers in enumerate(self._pair):
            if buffers.keys() == state.keys() and all(buffers[k] is t for k, t in state.items()):
                return parity
        self._step_buffers(next(iter(state.values())).shape[0])
        self._pair = (dict(state), dict(self._twin(state)))
        self._decode_bindings = []
        for inputs, outputs in (self._pair, self._pair[::-1]):
            binding = self.sessions["decode"].io_binding()
            self._bind_input(binding, "tokens", self._tokens)
            self._bind_input(binding, "positions", self._positions)
            self._bind_state(binding, inputs, outputs)
            self._decode_bindings.append(binding)
        return 0

    def _bind_state(self, binding, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        for entry in self.spec:
            self._bind_input(binding, entry.qualified_name, inputs[entry.key])
            self._bind_buffer(binding.bind_output, f"new_{entry.qualified_name}", outputs[entry.key])
        self._bind_buffer(binding.bind_output, "logits", self._logits)

    def _bind_input(self, binding, name: str, tensor: torch.Tensor) -> None:
        self._bind_buffer(binding.bind_input, name, tensor)

    def _bind_buffer(self, bind, name: str, tensor: torch.Tensor) -> None:
        """Bind a torch tensor's memory by pointer (it must stay alive and in place while bound)."""
        bind(
            name,
            self.device.type,
            self.device.index or 0,
            numpy_dtype(tensor.dtype),
            tuple(tensor.shape),
            tensor.data_ptr(),
        )

    def _run(self, phase: str, binding) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream().synchronize()  # the inputs torch wrote are ready before ORT reads them
        self.sessions[phase].run_with_iobinding(binding)
        binding.synchronize_outputs()
