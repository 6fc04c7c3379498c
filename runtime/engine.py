"""The generation engine: batches of prompts of different lengths, a preallocated explicit cache, and a
prefill + decode-step loop over a runner (runtime/runners.py: "torch", "compiled"; runtime/
onnxruntime_runner.py: "onnxruntime", an exported artifact).

The engine owns the request: checks, padding, the cache length, sampling, EOS and timing. A runner with
static decode shapes (the compiled backend) gets the cache length rounded up to a multiple of
CACHE_BUCKET, so that requests of similar size reuse one compiled graph. A compressed cache (DMC: fewer
slots than tokens) is sized by runtime.state.CompressedCacheManager, its capacities in CACHE_BUCKET steps.

An encoder-decoder model (`encoder_decoder` on the runner: t5) reads each prompt as its encoder input: its
prefill encodes the prompts, fills the cross-attention cache and runs the decoder's start token at decoder
position 0, so decoding continues at position 1, and its cache slots hold max(prompt, new tokens) tokens.

A model that reads images (`takes_media` on the runner: revilm) gets one image per prompt (`images=`, the
image before the prompt text) and optionally each prompt's retrieved captions as token ids (`retrieved=`);
the runner's `encode_media` writes their cross-attention keys and values into the state once per request,
before prefill (inside the measured time to first token).
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runtime import metrics
from runtime import state as runtime_state
from runtime.runners import (
    ARTIFACT_BACKENDS,
    BACKENDS,
    WEIGHT_LAYOUTS,
    artifact_runner,
    check_backend,
    decode_step_of,
    prefill_of,
    set_weight_layout,
    torch_runner,
)
from runtime.sampling import select_next_tokens, validate_sampling
from zoo.errors import ContextLengthError, ZooError

__all__ = [
    "ARTIFACT_BACKENDS",
    "BACKENDS",
    "CACHE_BUCKET",
    "WEIGHT_LAYOUTS",
    "Engine",
    "GenerationResult",
    "check_backend",
    "compressed_capacity",
    "decode_step_of",
    "prefill_of",
    "set_weight_layout",
]
LOAD_BACKENDS = ("auto", *BACKENDS)
CACHE_BUCKET = 128


def compressed_capacity(in_use: int, capacity: int, limit: int, after_prefill: bool = False) -> int:
    """runtime.state.compressed_capacity in steps of the engine's CACHE_BUCKET."""
    return runtime_state.compressed_capacity(in_use, capacity, limit, CACHE_BUCKET, after_prefill)


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


def is_artifact_dir(name_or_path: str | os.PathLike) -> bool:
    from export.artifact import MANIFEST_FILE

    return (Path(name_or_path).expanduser() / MANIFEST_FILE).is_file()


class Engine:
    """Generation over a runner's prefill / decode_step.

    `Engine(model, backend, weight_layout)` runs an nn.Module on the "torch" or "compiled" backend (see
    runtime.runners.TorchRunner for the weight layout chosen per request); `Engine.load` also opens
    exported artifacts; `Engine.from_runner` takes any runner.
    """

    def __init__(self, model: torch.nn.Module, backend: str = "torch", weight_layout: str = "auto"):
        self.runner = torch_runner(model, backend, weight_layout)
        self.config = self.runner.config
        self.backend = backend

    @classmethod
    def from_model(cls, model: torch.nn.Module, backend: str = "torch", weight_layout: str = "auto") -> "Engine":
        return cls(model, backend, weight_layout)

    @classmethod
    def from_runner(cls, runner) -> "Engine":
        engine = cls.__new__(cls)
        engine.runner, engine.config, engine.backend = runner, runner.config, runner.backend
        return engine

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> "Engine":
        """An artifact directory (it holds manifest.json; "auto" -> "onnxruntime"; "tensorrt" runs the
        engines of a `zoo export --format tensorrt` artifact), or a checkpoint directory or registered model
        name (seeded random weights; "auto" -> "torch")."""
        if backend not in LOAD_BACKENDS:
            check_backend(backend, allow_artifacts=True)  # unknown, or a runtime that is not installed
        if is_artifact_dir(name_or_path):
            if backend not in ("auto", *ARTIFACT_BACKENDS):
                raise ZooError(
                    f"{name_or_path} is an exported artifact (ONNX graphs, no torch weights): it runs on the "
                    f"{' or '.join(ARTIFACT_BACKENDS)} backend; for {backend}, load the model name or checkpoint it "
                    "was exported from"
                )
            return cls.load_artifact(name_or_path, dtype, "onnxruntime" if backend == "auto" else backend)
        backend = "torch" if backend == "auto" else backend
        check_backend(backend)  # before loading: onnxruntime and tensorrt need an artifact
        from zoo.registry import load_model

        return cls(load_model(str(name_or_path), dtype=dtype, seed=seed), backend)

    @classmethod
    def load_artifact(
        cls, path: str | os.PathLike, dtype: torch.dtype | None = None, backend: str = "onnxruntime"
    ) -> "Engine":
        """An exported artifact on ONNX Runtime or TensorRT (checked by export.artifact.verify first)."""
        runner = artifact_runner(path, backend)
        if dtype is not None and dtype != runner.dtype:
            raise ZooError(
                f"{path} holds {runner.manifest['dtype']} graphs; export it again with --dtype "
                f"{str(dtype).removeprefix('torch.')} for that dtype"
            )
        return cls.from_runner(runner)

    @property
    def model(self) -> torch.nn.Module:
        """The nn.Module of a torch / compiled engine (an artifact's engine has none)."""
        if not hasattr(self.runner, "model"):
            raise ZooError(f"the {self.backend} engine runs an exported artifact; it has no nn.Module")
        return self.runner.model

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def weight_layout(self) -> str:
        return getattr(self.runner, "weight_layout", "as-is")

    def layout_for(self, batch: int) -> str:
        return self.runner.layout_for(batch) if hasattr(self.runner, "layout_for") else "as-is"

    @property
    def encoder_decoder(self) -> bool:
        """Whether prompts are encoder inputs and new tokens a separate decoder sequence (module docstring)."""
        return getattr(self.runner, "encoder_decoder", False)

    def check_request(self, prompts: list[list[int]], max_new_tokens: int, eos: set[int] = frozenset()) -> None:
        if not prompts:
            raise ZooError("no prompts given")
        if max_new_tokens < 1:
            raise ZooError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        context, vocab = self.config.max_seq_len, self.config.vocab_size
        if self.encoder_decoder and max_new_tokens > context:
            raise ContextLengthError(
                f"max_new_tokens={max_new_tokens} exceeds the decoder's context of {context}; ask for at most {context}"
            )
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ZooError(f"prompt {i} is empty")
            if len(prompt) > context:
                raise ContextLengthError(
                    f"prompt {i} has {len(prompt)} tokens, longer than the model's context of {context}"
                )
            if not self.encoder_decoder and len(prompt) + max_new_tokens > context:
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

    def media_inputs(self, batch: int, images, retrieved):
        """(pixel_values (B, 3, S, S), caption_ids, caption_lengths) for encode_media, or None for a text-only
        model; errors for images given to a text-only model, or none given to a model that reads them."""
        if not getattr(self.runner, "takes_media", False):
            if images is not None or retrieved is not None:
                raise ZooError(
                    f"the {self.config.family} family reads text only; it takes no images or retrieved captions"
                )
            return None
        if images is None:
            raise ZooError(f"the {self.config.family} family needs one image per prompt (images=, `--image`)")
        pixels = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        size = self.config.vision.image_size
        if pixels.shape != (batch, 3, size, size):
            raise ZooError(
                f"expected {batch} image(s) of shape (3, {size}, {size}), one per prompt; got {tuple(pixels.shape)}"
            )
        # an artifact's runner has no nn.Module: its dtype is the manifest's
        dtype = self.runner.dtype if hasattr(self.runner, "dtype") else next(self.runner.model.parameters()).dtype
        pixels = pixels.to(self.runner.device, dtype)
        if retrieved is None:
            return pixels, None, None
        if len(retrieved) != batch:
            raise ZooError(f"retrieved captions for {len(retrieved)} prompts; expected one list per prompt ({batch})")
        from zoo.models.revilm.model import pack_captions

        return (pixels, *pack_captions(retrieved, self.config, self.runner.device))

    def needed_cache_length(self, longest_prompt: int, max_new_tokens: int) -> int:
        """The fewest cache slots a request needs: prompt and new tokens in one sequence, or, for an
        encoder-decoder model, the encoder input and the decoder tokens in caches sharing the slot axis."""
        if self.encoder_decoder:
            return max(longest_prompt, max_new_tokens)
        return longest_prompt + max_new_tokens

    def cache_length(self, longest_prompt: int, max_new_tokens: int) -> int:
        needed = self.needed_cache_length(longest_prompt, max_new_tokens)
        if self.runner.static_shapes:
            needed = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
        return min(needed, self.config.max_seq_len)

    def fit_compressed_cache(self, state: dict, limit: int, after_prefill: bool = False) -> dict:
        """Resize a compressed cache to compressed_capacity (a copy only when the capacity changes)."""
        return runtime_state.CompressedCacheManager(self.runner, limit, CACHE_BUCKET).fit(state, after_prefill)

    def warmup(self, prompts: list[list[int]], max_new_tokens: int, **media) -> float:
        """Run the request's shapes once (this compiles the compiled backend's prefill and decode step);
        returns the seconds it took. `media`: the request's images= and retrieved=, if any."""
        start = time.perf_counter()
        longest = max(len(p) for p in prompts)
        self.generate_with_stats(
            prompts, min(2, max_new_tokens), cache_length=self.cache_length(longest, max_new_tokens), **media
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
        images: torch.Tensor | list[torch.Tensor] | None = None,
        retrieved: list[list[list[int]]] | None = None,
    ) -> GenerationResult:
        """Generate up to max_new_tokens per prompt; a row stops after emitting an EOS id (kept in its output).

        cache_length: cache slots to allocate (default: longest prompt + max_new_tokens, bucketed for a
        runner with static decode shapes); for a compressed cache, the most it may grow to.
        images: one pixel tensor (3, S, S) per prompt (a list, or one (B, 3, S, S) tensor) for a model that
        reads images; retrieved: per prompt, the token ids of its retrieved captions (default: none).
        """
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        self.check_request(prompts, max_new_tokens, eos)
        media = self.media_inputs(len(prompts), images, retrieved)
        validate_sampling(temperature, top_k, top_p)
        runner = self.runner
        runner.prepare(len(prompts))
        device = runner.device
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
        elif not self.needed_cache_length(longest, max_new_tokens) <= cache_length <= self.config.max_seq_len:
            raise ZooError(
                f"cache_length={cache_length} must be in "
                f"[{self.needed_cache_length(longest, max_new_tokens)}, {self.config.max_seq_len}]"
            )
        compressed = runner.compressed_cache
        manager = runtime_state.CompressedCacheManager(runner, cache_length, CACHE_BUCKET) if compressed else None
        state = runner.init_state(batch, longest if compressed else cache_length)

        result = GenerationResult(tokens=[[] for _ in prompts], start_time=time.perf_counter())
        if media is not None:
            state = runner.encode_media(*media, state)
        logits, state = runner.prefill(input_ids, lengths, state)
        if compressed:
            state = manager.fit(state, after_prefill=True)
        result.state_bytes = runner.state_bytes(state)
        positions = torch.ones_like(lengths) if self.encoder_decoder else lengths  # of the next token fed
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
                state = manager.fit(state)
                result.state_bytes = max(result.state_bytes, runner.state_bytes(state))
            logits, state = runner.decode_step(next_tokens, positions, state)
            positions = positions + 1
        result.state_summary = runner.state_summary(state, positions)
        return result
