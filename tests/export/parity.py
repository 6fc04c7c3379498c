"""Greedy generation through an artifact's graphs in ONNX Runtime beside the torch model's own steps."""

import json
from pathlib import Path

import numpy as np
import torch

DECODE_STEPS = 3


def prompts(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (batch, max length) random ids and the lengths."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), max(lengths)), generator=generator)
    return ids, torch.tensor(lengths)


def torch_greedy(model, ids, lengths, cache: int, steps: int = DECODE_STEPS):
    """(logits, tokens) of each step: the prefill, then `steps` greedy decode steps."""
    with torch.no_grad():
        state = model.init_state(ids.shape[0], cache)
        logits, state = model.prefill(ids, lengths, state)
        all_logits, tokens = [logits], [logits.argmax(-1)]
        positions = lengths.clone()
        for _ in range(steps):
            logits, state = model.decode_step(tokens[-1], positions, state)
            all_logits.append(logits)
            tokens.append(logits.argmax(-1))
            positions = positions + 1
    return [t.numpy() for t in all_logits], [t.numpy() for t in tokens]


def sessions(artifact: Path) -> dict:
    """An ONNX Runtime (CPU) session per graph of the artifact."""
    import onnxruntime as ort

    manifest = json.loads((Path(artifact) / "manifest.json").read_text())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return {
        phase: ort.InferenceSession(str(Path(artifact) / graph["file"]), options, providers=["CPUExecutionProvider"])
        for phase, graph in manifest["graphs"].items()
    }


def ort_greedy(graphs: dict, model, ids, lengths, cache: int, steps: int = DECODE_STEPS):
    """The same loop through the ONNX graphs, the new_state outputs fed back as the state inputs."""
    initial = model.init_state(ids.shape[0], cache)
    state = {entry.qualified_name: initial[entry.key].numpy() for entry in model.state_spec()}

    def run(session, feeds):
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(None, feeds)))
        return out["logits"], {name.removeprefix("new_"): out[name] for name in names if name.startswith("new_")}

    logits, state = run(graphs["prefill"], {"input_ids": ids.numpy(), "lengths": lengths.numpy(), **state})
    all_logits, tokens = [logits], [logits.argmax(-1)]
    positions = lengths.numpy().copy()
    for _ in range(steps):
        logits, state = run(graphs["decode"], {"tokens": tokens[-1], "positions": positions, **state})
        all_logits.append(logits)
        tokens.append(logits.argmax(-1))
        positions = positions + 1
    return all_logits, tokens


def assert_parity(graphs: dict, model, lengths: list[int], seed: int = 0) -> None:
    """ONNX Runtime's logits within fp32 tolerance of torch's at every step, and the same greedy tokens."""
    ids, lens = prompts(model.config.vocab_size, lengths, seed)
    cache = max(lengths) + DECODE_STEPS + 1
    want_logits, want_tokens = torch_greedy(model, ids, lens, cache)
    got_logits, got_tokens = ort_greedy(graphs, model, ids, lens, cache)
    assert np.abs(want_logits[0]).max() > 1.0  # informative weights: logits differ between tokens
    for step, (got, want) in enumerate(zip(got_logits, want_logits, strict=True)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3, err_msg=f"lengths {lengths}, step {step}")
    for step, (got, want) in enumerate(zip(got_tokens, want_tokens, strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"lengths {lengths}, step {step}")
