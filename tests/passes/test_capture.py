"""Every family's prefill and decode step captures with dynamic batch, prompt and cache lengths, and the
captured program equals eager at shapes other than the example's."""

import pytest
import torch

import zoo
from passes.capture import EXAMPLE_BATCH, EXAMPLE_CACHE, EXAMPLE_PROMPT, capture
from tests.passes.conftest import LENGTHS, REGION_NODES, prompts_batch
from zoo.errors import ZooError


def test_region_nodes_one_per_layer(family):
    name, _, captured = family
    for phase, program in captured.items():
        nodes = program.zoo_nodes()
        expected = REGION_NODES.get(name, {}).get(phase, {})
        assert {op: nodes.count(op) for op in expected} == expected, (phase, nodes)


@pytest.mark.parametrize("batch", [1, 3])
def test_captured_prefill_and_decode_equal_eager(family, batch):
    name, model, captured = family
    prefill, decode = captured["prefill"].module(), captured["decode"].module()
    vocab = model.config.vocab_size
    for length in LENGTHS:
        ids, lengths = prompts_batch(vocab, batch, length, seed=length)
        cache = length + 4
        with torch.no_grad():
            want_logits, want_state = model.prefill(ids, lengths, model.init_state(batch, cache))
            got_logits, got_state = prefill(ids, lengths, model.init_state(batch, cache))
            torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-3, msg=f"{name} prefill {length}")
            tokens = want_logits.argmax(-1)
            want_step, want_after = model.decode_step(tokens, lengths, want_state)
            got_step, got_after = decode(tokens, lengths, got_state)
        torch.testing.assert_close(got_step, want_step, atol=1e-4, rtol=1e-3, msg=f"{name} decode {length}")
        for key in want_after:
            torch.testing.assert_close(got_after[key], want_after[key], atol=1e-4, rtol=1e-3, msg=f"{name} {key}")


def test_names_and_dynamic_axes(family):
    name, model, captured = family
    decode = captured["decode"]
    spec = model.state_spec()
    assert decode.input_names == ["tokens", "positions", *(f"state.{e.name}.{e.layer}" for e in spec)]
    assert decode.output_names[0] == "logits" and len(decode.output_names) == 1 + len(spec)
    assert captured["prefill"].dynamic_axes["input_ids"] == {0: "batch", 1: "prompt"}
    for entry in spec:
        assert decode.dynamic_axes[entry.qualified_name] == entry.dynamic_axes()
        assert entry.dynamic_axes().get(0) == "batch"
    assert (EXAMPLE_BATCH, EXAMPLE_PROMPT, EXAMPLE_CACHE) == (2, 5, 11)  # tests run other sizes than these


def test_unknown_phase():
    with pytest.raises(ZooError, match="unknown phase 'train'"):
        capture(zoo.build("llama-tiny"), "train")
