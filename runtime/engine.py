"""The generation engine: batches of prompts of different lengths, a preallocated explicit cache, and a
prefill + decode-step loop on one of several backends.

Backends:
- "torch": eager PyTorch.
- "compiled": prefill and decode step under torch.compile with the zoo backend (passes/backend.py: zoo
  graph passes, then inductor). Prefill has dynamic shapes (one graph for all prompt lengths); the decode
  step has static shapes: the cache length is rounded up to a multiple of CACHE_BUCKET so that requests of
  similar size reuse one compiled graph.

A compressed cache (DMC: fewer slots than tokens) is sized by the slots it holds, not by the tokens: the
prefill gets room for the whole prompt, the cache is then cut to the slots in use plus headroom, and it
grows by half whenever a head fills it (compressed_capacity), each size rounded up to CACHE_BUCKET.
"""

import time
from dataclasses import dataclass, field

import torch

from runtime import metrics
from runtime.sampling import select_next_tokens, validate_sampling
from zoo.errors import ContextLengthError, ZooError

BACKENDS = ("torch", "compiled")
# Backends named by the design that run exported artifacts; each says why it cannot run yet.
ARTIFACT_BACKENDS = {"onnxruntime": ("onnxruntime", "onnx"), "tensorrt": ("tensorrt", "tensorrt")}
WEIGHT_LAYOUTS = ("auto", "as-is", "row-major", "column-major")
CACHE_BUCKET = 128


def compressed_capacity(in_use: int, capacity: int, limit: int, after_prefill: bool = False) -> int:
    """The slot capacity a compressed cache should have when its fullest head holds `in_use` slots: after
    the prefill, the slots in use plus one; later, unchanged while a slot is free, else half as large
    again. Rounded up to CACHE_BUCKET; never more than `limit` (prompt + new tokens, which always fit)."""
    if after_prefill:
        wanted = in_use + 1
    elif in_use < capacity:
        return capacity
    else:
        wanted = max(in_use + 1, capacity * 3 // 2)
    return min(-(-wanted // CACHE_BUCKET) * CACHE_BUCKET, limit)


def set_weight_layout(model: torch.nn.Module, layout: str) -> None:
    """Re-lay every weight matrix in place: same shapes and values, row-major or transposed strides.

    Which layout streams fastest depends on the kernel that reads it: on CPU, MKL/oneDNN read a
    column-major weight faster at every batch size tried; the compiled backend's matvec rewrite
    (passes/matvec_pass.py, batch <= MAX_ROWS) wants row-major (figures in docs/architecture.md).
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() != 2:
                continue
            if layout == "column-major" and param.is_contiguous():
                param.data = param.data.T.contiguous().T
            elif layout == "row-major" and not param.is_contiguous():
                param.data = param.data.contiguous()


@dataclass
class GenerationResult:
    """New tokens per prompt, and when each batch step's tokens were ready (time.perf_counter seconds)."""

    tokens: list[list[int]]
    start_time: float
    token_times: list[float] = field(default_factory=list)  # token_times[i]: step i's tokens ready
    state_bytes: int = 0  # most bytes of cache/state tensors held while decoding (a DMC prefill briefly holds more)
    state_summary: dict = field(default_factory=dict)  # e.g. DMC's compression ratios (model.state_summary)

    @property
    def ttft_s(self) -> float:
        return metrics.ttft(self.start_time, self.token_times)

    @property
    def tpot_s(self) -> float:
        """NaN when only one token was generated (see runtime/metrics.py)."""
        return metrics.tpot(self.token_times)


def check_backend(name: str) -> None:
    """Raise an error that says why `name` cannot run here (unknown, runtime missing, or not yet built)."""
    if name in BACKENDS:
        return
    if name not in ARTIFACT_BACKENDS:
        known = ", ".join([*BACKENDS, *ARTIFACT_BACKENDS])
        raise ZooError(f"unknown backend {name!r}; known: {known}")
    from zoo.errors import require

    module, extra = ARTIFACT_BACKENDS[name]
    require(module, extra)  # MissingDependencyError naming the extra when the runtime is not installed
    raise ZooError(
        f"the {name} backend runs exported artifacts, which this version cannot produce yet "
        f"(`zoo export` is not implemented); available backends: {', '.join(BACKENDS)}"
    )


# Every model of a family shares one decode_step code object, and each cache-length bucket is a graph of
# its own: Dynamo's default limit of 8 graphs per code object is too few for a process that serves
# several models or long requests.
RECOMPILE_LIMIT = 64


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


class Engine:
    """Generation over a model's prefill / decode_step.

    weight_layout "auto" picks, per request, the layout the kernels read fastest on CPU (set_weight_layout:
    row-major where the compiled backend's matvec rewrite applies, batch <= MAX_ROWS; column-major for
    BLAS otherwise) and leaves weights as they are on other devices. The layout is applied to the model
    passed in (its values do not change) at the start of every generate call, so engines of different
    backends can share one model.
    """

    def __init__(self, model: torch.nn.Module, backend: str = "torch", weight_layout: str = "auto"):
        self._decode = decode_step_of(model, backend)  # raises first for a backend that cannot run
        self._prefill = prefill_of(model, backend)
        if weight_layout not in WEIGHT_LAYOUTS:
            raise ZooError(f"unknown weight layout {weight_layout!r}; available: {', '.join(WEIGHT_LAYOUTS)}")
        if weight_layout == "auto" and next(model.parameters()).device.type != "cpu":
            weight_layout = "as-is"
        self.weight_layout = weight_layout
        self.model = model.eval()
        self.config = model.config
        self.backend = backend

    @classmethod
    def from_model(cls, model: torch.nn.Module, backend: str = "torch", weight_layout: str = "auto") -> "Engine":
        return cls(model, backend, weight_layout)

    @classmethod
    def load(cls, name_or_path: str, backend: str = "torch", dtype: torch.dtype | None = None, seed: int = 0):
        """A checkpoint directory, or a registered model name with seeded random weights."""
        from zoo.registry import load_model

        return cls(load_model(name_or_path, dtype=dtype, seed=seed), backend)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def layout_for(self, batch: int) -> str:
        if self.weight_layout != "auto":
            return self.weight_layout
        from passes.matvec_pass import MAX_ROWS

        return "row-major" if self.backend == "compiled" and batch <= MAX_ROWS else "column-major"

    def check_request(self, prompts: list[list[int]], max_new_tokens: int, eos: set[int] = frozenset()) -> None:
        if not prompts:
            raise ZooError("no prompts given")
        if max_new_tokens < 1:
            raise ZooError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        context, vocab = self.config.max_seq_len, self.config.vocab_size
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ZooError(f"prompt {i} is empty")
            if len(prompt) > context:
                raise ContextLengthError(
                    f"prompt {i} has {len(prompt)} tokens, longer than the model's context of {context}"
                )
            if len(prompt) + max_new_tokens > context:
                raise ContextLengthError(
                    f"prompt {i} ({len(prompt)} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
                    f"model's context of {context}; ask for at most {context - len(prompt)} new tokens"
                )
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ZooError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        bad_eos = sorted(t for t in eos if not 0 <= t < vocab)
        if bad_eos:
            raise ZooError(f"EOS token ids outside the vocabulary [0, {vocab}): {bad_eos[:5]}")

    def cache_length(self, longest_prompt: int, max_new_tokens: int) -> int:
        needed = longest_prompt + max_new_tokens
        if self.backend == "compiled":
            needed = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
        return min(needed, self.config.max_seq_len)

    def fit_compressed_cache(self, state: dict, limit: int, after_prefill: bool = False) -> dict:
        """Resize a compressed cache to compressed_capacity (a copy only when the capacity changes)."""
        in_use, capacity = self.model.cache_slots(state)
        wanted = compressed_capacity(in_use, capacity, limit, after_prefill)
        return state if wanted == capacity else self.model.resize_cache(state, wanted)

    def warmup(self, prompts: list[list[int]], max_new_tokens: int) -> float:
        """Run the request's shapes once (this compiles the compiled backend's prefill and decode step);
        returns the seconds it took."""
        start = time.perf_counter()
        longest = max(len(p) for p in prompts)
        self.generate_with_stats(
            prompts, min(2, max_new_tokens), cache_length=self.cache_length(longest, max_new_tokens)
        )
        return time.perf_counter() - start

    def generate(self, prompts: list[list[int]], max_new_tokens: int, **sampling) -> list[list[int]]:
        """New tokens per prompt. Keyword options as `generate_with_stats`."""
        return self.generate_with_stats(prompts, max_new_tokens, **sampling).tokens

    @torch.inference_mode()
    def generate_with_stats(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos_token_id: int | list[int] | None = None,
        cache_length: int | None = None,
    ) -> GenerationResult:
        """Generate up to max_new_tokens per prompt; a row stops after emitting an EOS id (kept in its output).

        cache_length: cache slots to allocate (default: longest prompt + max_new_tokens, bucketed for the
        compiled backend); for a compressed cache, the most it may grow to.
        """
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        self.check_request(prompts, max_new_tokens, eos)
        validate_sampling(temperature, top_k, top_p)
        set_weight_layout(self.model, self.layout_for(len(prompts)))
        device = self.device
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else torch.seed())

        batch = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        longest = int(lengths.max())
        input_ids = torch.zeros(batch, longest, dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            input_ids[row, : len(prompt)] = torch.tensor(prompt, device=device)
        if cache_length is None:
            cache_length = self.cache_length(longest, max_new_tokens)
        elif not longest + max_new_tokens <= cache_length <= self.config.max_seq_len:
            raise ZooError(
                f"cache_length={cache_length} must be in [{longest + max_new_tokens}, {self.config.max_seq_len}]"
            )
        compressed = getattr(self.model, "compressed_cache", False)
        state = self.model.init_state(batch, longest if compressed else cache_length)

        result = GenerationResult(tokens=[[] for _ in prompts], start_time=time.perf_counter())
        logits, state = self._prefill(input_ids, lengths, state)
        if compressed:
            state = self.fit_compressed_cache(state, cache_length, after_prefill=True)
        result.state_bytes = sum(t.nbytes for t in state.values())
        positions = lengths
        finished = [False] * batch
        for step in range(max_new_tokens):
            next_tokens = select_next_tokens(logits, temperature, top_k, top_p, generator)
            token_list = next_tokens.tolist()
            result.token_times.append(time.perf_counter())
            for row, token in enumerate(token_list):
                if not finished[row]:
                    result.tokens[row].append(token)
                    finished[row] = token in eos
            if all(finished) or step == max_new_tokens - 1:
                break
            if compressed:
                state = self.fit_compressed_cache(state, cache_length)
                result.state_bytes = max(result.state_bytes, sum(t.nbytes for t in state.values()))
            logits, state = self._decode(next_tokens, positions, state)
            positions = positions + 1
        if hasattr(self.model, "state_summary"):
            result.state_summary = self.model.state_summary(state, positions)
        return result
