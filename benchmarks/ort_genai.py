"""onnxruntime-genai as a `zoo bench` peer: its model builder converts the HF twin of a zoo model (the same
weights) into an ONNX model plus genai_config.json, and its generation loop, with its own KV-cache handling,
is timed like HFRunner times HF transformers' generate.

The package is optional (the `genai` extra) and imported lazily, so `import benchmarks.ort_genai` works
without it. The peer runs fp32 on CPU.
"""

import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import quiet_hf_progress
from zoo.errors import ZooError, require

# Zoo families whose HF twin the builder converts. Verified unsupported by onnxruntime-genai 0.18's builder:
# gpt (GPT2LMHeadModel), moe (MixtralForCausalLM, Qwen2MoeForCausalLM), mamba2 (Mamba2ForCausalLM),
# mamba2-hybrid (NemotronHForCausalLM); dmc has no HF twin at all.
SUPPORTED_FAMILIES = ("llama",)


def check_supported(config) -> None:
    if config.family not in SUPPORTED_FAMILIES:
        raise ZooError(
            f"onnxruntime-genai's model builder does not convert the {config.family} family "
            f"(supported: {', '.join(SUPPORTED_FAMILIES)})"
        )


def write_wordlevel_tokenizer(directory: Path, vocab_size: int) -> None:
    """A tokenizer.json mapping token i to the word "<i>": the builder loads a tokenizer from the HF
    directory, though generation here feeds token ids and never tokenizes text."""
    from tokenizers import Tokenizer, models

    vocab = {f"<{i}>": i for i in range(vocab_size)}
    Tokenizer(models.WordLevel(vocab, unk_token="<0>")).save(str(directory / "tokenizer.json"))


@contextlib.contextmanager
def preserved_root_logging():
    """The root logger's level and handlers as they were, whatever the block configures."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def build_genai_model(hf_model, out_dir, vocab_size: int) -> Path:
    """Convert `hf_model` with onnxruntime-genai's model builder (fp32, CPU) into `out_dir`, and return it.

    The model is saved (safetensors) with a WordLevel tokenizer into a temporary HF directory, which the
    builder reads in-process (its output is captured, not printed). A builder failure is a one-line
    ZooError carrying the builder's last error line.

    onnxruntime-genai always has an EOS id (without one it takes the pad id) and, below min_length, masks
    its logit. The zoo's twins have none, so the last vocabulary id is named EOS and pad: the peer's greedy
    picks can differ from the zoo's only where that id would be the argmax."""
    require("onnxruntime_genai", "genai")
    transformers = require("transformers", "hf")
    with preserved_root_logging():  # the builder configures the root logger at INFO when imported
        from onnxruntime_genai.models import builder

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="zoo-genai-") as tmp, preserved_root_logging():
        hf_dir, cache_dir = Path(tmp) / "hf", Path(tmp) / "cache"
        with quiet_hf_progress(transformers):
            hf_model.save_pretrained(hf_dir)
        config_path = hf_dir / "config.json"
        hf_config = json.loads(config_path.read_text())
        if hf_config.get("eos_token_id") is None:
            hf_config["eos_token_id"] = hf_config["pad_token_id"] = vocab_size - 1
            config_path.write_text(json.dumps(hf_config, indent=1))
        write_wordlevel_tokenizer(hf_dir, vocab_size)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                options = builder.parse_extra_options(
                    None, str(hf_dir), str(out_dir), "fp32", "cpu", str(cache_dir), ["hf_token=false"]
                )
                builder.create_model(None, str(hf_dir), str(out_dir), "fp32", "cpu", str(cache_dir), **options)
        except Exception as exc:
            message = str(exc).replace(str(hf_dir), type(hf_model).__name__)  # not the temporary path
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            last = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
            raise ZooError(f"onnxruntime-genai's model builder failed: {last}") from exc
    return out_dir


class OrtGenAIRunner:
    """onnxruntime-genai's Generator, greedy, exactly gen_len new tokens; all prompts of one length (like
    HFRunner). Timestamps start after the Generator (and its KV cache) is created, as the zoo engine starts
    after allocating its state, and each is taken once a step's tokens are on the host."""

    name = "ort-genai"

    def __init__(self, model_dir, config):
        self.og = require("onnxruntime_genai", "genai")
        self.model = self.og.Model(str(model_dir))
        self.config = config

    @classmethod
    def from_hf_model(cls, hf_model, config) -> "OrtGenAIRunner":
        """Build `hf_model` (the HF twin of `config`) with the builder into a temporary directory that
        lives as long as the runner."""
        check_supported(config)
        build_dir = tempfile.TemporaryDirectory(prefix="zoo-ort-genai-")
        try:
            runner = cls(build_genai_model(hf_model, build_dir.name, config.vocab_size), config)
        except BaseException:
            build_dir.cleanup()
            raise
        runner.build_dir = build_dir
        return runner

    def warmup(self, prompts, gen_len):
        self.generate(prompts, gen_len)

    def generate(self, prompts: list[list[int]], gen_len: int):
        """(new tokens per prompt, start time, one perf_counter timestamp per generated step)."""
        import numpy as np

        if not prompts or len({len(p) for p in prompts}) != 1:
            raise ZooError("the ort-genai runner needs a non-empty batch of prompts of one length")
        total = len(prompts[0]) + gen_len
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, batch_size=len(prompts), max_length=total, min_length=total)
        generator = self.og.Generator(self.model, params)
        input_ids = np.asarray(prompts, dtype=np.int32)
        steps, token_times = [], []
        start = time.perf_counter()
        generator.append_tokens(input_ids)  # runs the prefill
        for _ in range(gen_len):
            generator.generate_next_token()  # first step: picks from the prefill's logits; later: decodes, then picks
            steps.append(generator.get_next_tokens())
            token_times.append(time.perf_counter())
        return np.stack(steps, axis=1).tolist(), start, token_times

    def __call__(self, prompts, gen_len):
        _, start, token_times = self.generate(prompts, gen_len)
        # as for HF: the cache ends holding prompt + generated tokens, the last generated one not cached
        cached = len(prompts) * (len(prompts[0]) + gen_len - 1)
        return start, token_times, cached * self.config.cache_bytes_per_token(torch.float32)


def greedy_tokens(runner: OrtGenAIRunner, prompts: list[list[int]], gen_len: int) -> list[list[int]]:
    return runner.generate(prompts, gen_len)[0]
