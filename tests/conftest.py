"""Shared fixtures: tiny HF twins of zoo configs, written as real checkpoint directories.

Triton kernels run on CPU tensors under Triton's interpreter, which must be switched on before triton is
imported (zoo.ops.kernels); sm_90 compilation (zoo.ops.triton_aot) works with it on."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from zoo.registry import build_hf_twin  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one torch thread each
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from a clean torch.compile cache: DecoderLM.decode_step is one code object for
    every model, and the recompiles of a whole session would otherwise reach Dynamo's recompile limit."""
    yield
    torch._dynamo.reset()


def make_hf_model(config, seed: int = 0):
    """The HF twin of a zoo config (zoo.registry.build_hf_twin), with weights large enough that
    logits are O(1) and differ between tokens (HF's 0.02 init makes every logit nearly 0)."""
    return informative_weights(build_hf_twin(config, seed), seed)


def informative_weights(model, seed: int = 0):
    """Redraw weights so that logits are O(1) and differ between tokens: matrices ~ N(0, 0.1) (embeddings
    0.15), norm weights ~ 1 + N(0, 0.2), biases ~ N(0, 0.1). HF's and the zoo's 0.02 init make every
    logit nearly 0, which hides bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if param.dim() > 1:
                embedding = any(key in name for key in ("embed", "wte", "wpe"))
                param.copy_(noise * (0.15 if embedding else 0.1))
            elif name.endswith("bias"):
                param.copy_(noise * 0.1)
            else:
                param.copy_(1 + 0.2 * noise)
    return model


@pytest.fixture
def hf_checkpoint(tmp_path):
    """Factory: (checkpoint dir, HF model) for a zoo config; max_shard_size gives a sharded directory."""

    def write(config, seed: int = 0, max_shard_size: str | None = None, name: str = "hf"):
        model = make_hf_model(config, seed)
        path = tmp_path / name
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(path, **kwargs)
        return path, model

    return write


def assert_logits_match_hf(model, hf_model, vocab: int, lengths, atol: float = 1e-4):
    """Logits of `model` equal to the HF model's (fp32) on random ids at each length, batch of 2."""
    for length in lengths:
        ids = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            ours, theirs = model(ids), hf_model(ids).logits
        assert ours.shape == (2, length, vocab)
        assert theirs.abs().max() > 1.0  # the weights make logits informative, not all near zero
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=0, msg=f"length {length}")


def _missing(marker: str) -> str | None:
    """Why the tests with `marker` cannot run here (None: they can)."""
    import importlib.util

    if marker == "gpu" and not torch.cuda.is_available():
        return "needs a CUDA GPU; this machine has none"
    if marker == "tensorrt" and (importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available()):
        return "needs TensorRT and a CUDA GPU; not present here"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` or `tensorrt` skip, with the reason, where the machine lacks what they need."""
    for item in items:
        for marker in ("gpu", "tensorrt"):
            reason = item.get_closest_marker(marker) and _missing(marker)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
