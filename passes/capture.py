"""Capture a model's prefill and decode step as torch.export programs with dynamic batch, prompt and cache
lengths.

Every family exposes `prefill(input_ids, lengths, state)` and `decode_step(tokens, positions, state)` with
the state as a dict of explicit tensors declared by `model.state_spec()` (zoo/nn/state.py). Capture wraps
each in a module, exports it with the dynamic axes named after the spec ("batch", "prompt", "cache"), and
records the flat input and output names a graph file will carry: `input_ids`, `lengths` (prefill) or
`tokens`, `positions` (decode), `state.<name>.<layer>` for every state tensor, and `logits` plus
`new_state.<name>.<layer>` for the outputs. The zoo ops the models call stay single nodes of the
captured graph; `passes.decompose_pass` replaces them by their references for an unfused graph.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.export import Dim

from zoo.errors import ZooError
from zoo.nn.state import StateEntry

PHASES = ("prefill", "decode")
# example sizes of the traced call: neither 0 nor 1 (export specialises those), and unlike the sizes tests run
EXAMPLE_BATCH, EXAMPLE_PROMPT, EXAMPLE_CACHE = 2, 5, 11
MAX_DYNAMIC = 1 << 20


class PrefillStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, lengths, state):
        return self.model.prefill(input_ids, lengths, state)


class DecodeStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens, positions, state):
        return self.model.decode_step(tokens, positions, state)


@dataclass
class Captured:
    phase: str
    program: torch.export.ExportedProgram
    state: list[StateEntry]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]  # input name -> {axis: "batch" | "prompt" | "cache"}
    example_args: tuple  # the traced call's arguments (fresh copies: a run may update the state in place)

    def module(self) -> nn.Module:
        return self.program.module()

    def zoo_nodes(self) -> list[str]:
        """The zoo op of each zoo node of the graph, in graph order ("ssd_chunk_scan", ...)."""
        return [
            node.target.name().split("::")[1].split(".")[0]
            for node in self.program.graph.nodes
            if node.op == "call_function" and getattr(node.target, "namespace", None) == "zoo"
        ]


def example_inputs(model: nn.Module, phase: str, batch: int, length: int, cache: int) -> tuple:
    """(token ids, lengths or positions, state) for one call of the phase; a prefill's cache holds the prompt."""
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    if phase == "prefill":
        ids = torch.randint(0, vocab, (batch, length), generator=generator).to(device)
        lengths = torch.full((batch,), length, device=device)
        lengths[0] = max(1, length - 1)  # ragged: one row shorter
        return ids, lengths, model.init_state(batch, max(cache, length))
    tokens = torch.randint(0, vocab, (batch,), generator=generator).to(device)
    positions = torch.arange(batch, device=device) % cache
    return tokens, positions, model.init_state(batch, cache)


def capture(
    model: nn.Module,
    phase: str,
    batch: int = EXAMPLE_BATCH,
    length: int = EXAMPLE_PROMPT,
    cache: int = EXAMPLE_CACHE,
) -> Captured:
    """torch.export of `model`'s prefill or decode step, dynamic in batch, prompt length and cache length."""
    if phase not in PHASES:
        raise ZooError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
    context = min(model.config.max_seq_len, MAX_DYNAMIC)
    dims = {
        "batch": Dim("batch", min=1, max=MAX_DYNAMIC),
        "prompt": Dim("prompt", min=1, max=context),
        "cache": Dim("cache", min=1, max=context),
    }
    spec = model.state_spec()
    state_axes = {e.key: {axis: dims[size] for axis, size in e.dynamic_axes().items()} for e in spec}
    if phase == "prefill":
        step, first, second = PrefillStep(model), "input_ids", "lengths"
        shapes = ({0: dims["batch"], 1: dims["prompt"]}, {0: dims["batch"]}, state_axes)
    else:
        step, first, second = DecodeStep(model), "tokens", "positions"
        shapes = ({0: dims["batch"]}, {0: dims["batch"]}, state_axes)
    args = example_inputs(model, phase, batch, length, cache)
    with torch.no_grad():
        program = torch.export.export(step.eval(), args, dynamic_shapes=shapes)
    args = example_inputs(model, phase, batch, length, cache)
    axes = {first: {0: "batch", 1: "prompt"} if phase == "prefill" else {0: "batch"}, second: {0: "batch"}}
    axes |= {e.qualified_name: e.dynamic_axes() for e in spec}
    return Captured(
        phase=phase,
        program=program,
        state=spec,
        input_names=[first, second, *(e.qualified_name for e in spec)],
        output_names=["logits", *(f"new_{e.qualified_name}" for e in spec)],
        dynamic_axes=axes,
        example_args=args,
    )
