"""Hourglass (docs/algorithms.md §5): causality, factor-1 degeneracy against a plain transformer, cached
decode against the full forward for ragged batches, the hierarchy parser, state spec and capture.
HF has no twin of the family, so these are its oracles."""

import dataclasses

import pytest
import torch

import zoo
from passes.capture import capture, example_inputs
from runtime import Engine
from tests.conftest import informative_weights
from zoo.models.hourglass import SIZES, HourglassConfig, HourglassLM, parse_hierarchy
from zoo.models.hourglass.config import Level
from zoo.nn.transformer import DecoderLM

TINY = SIZES["hourglass-tiny"]  # nested 2x then 2x, attention resampling, GQA
VARIANTS = {
    "tiny-attention-nested": TINY,
    "factor-3-linear": dataclasses.replace(TINY, hierarchy="1@1 2@3 1@1", downsampling="linear", upsampling="linear"),
    "factor-3-average-repeat": dataclasses.replace(
        TINY, hierarchy="2@1 1@3 0@1", downsampling="average", upsampling="repeat"
    ),
    "3-then-2-attention-inner-linear-repeat": dataclasses.replace(
        TINY, hierarchy="1@1 1@3 1@6 1@3 1@1", resampling_inner_down="linear", resampling_inner_up="repeat"
    ),
}


def build(config: HourglassConfig, seed: int = 0) -> HourglassLM:
    """The model with weights large enough that logits are O(1)."""
    return informative_weights(HourglassLM(config), seed).eval()


def total_factor(config: HourglassConfig) -> int:
    return max(level.factor for level in config.levels)


def test_parse_hierarchy():
    assert parse_hierarchy("2@1 8@3 2@1") == [Level(1, 1, 2, 2), Level(3, 3, 8, None)]
    assert parse_hierarchy("1@1 2@2 4@4 3@2 1@1") == [Level(1, 1, 1, 1), Level(2, 2, 2, 3), Level(4, 2, 4, None)]
    assert parse_hierarchy("4@1") == [Level(1, 1, 4, None)]
    assert HourglassConfig(vocab_size=8, d_model=8, n_heads=2, d_ff=8, hierarchy="2@1 8@3 2@1").n_layers == 12


@pytest.mark.parametrize(
    "text, message",
    [
        ("2@0", "factor must be a positive integer"),
        ("1@1 2@0 1@1", "factor must be a positive integer"),
        ("x@2", "expected <layers>@<factor>"),
        ("2@1 8@3 2", "expected <layers>@<factor>"),
        ("2@1 8@3", "unbalanced hierarchy"),
        ("1@1 2@2 4@4 2@3 1@1", "unbalanced hierarchy"),
        ("1@1 2@2 3@3 2@2 1@1", "not a multiple of the factor above, 2"),
        ("8@3", "must start and end at factor 1"),
        ("", "empty hierarchy"),
    ],
)
def test_parse_hierarchy_errors(text, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_hierarchy(text)
    assert "\n" not in str(error.value)


def test_bad_resampling_is_refused():
    with pytest.raises(ValueError, match="unknown downsampling 'max'; known: linear, average, attention"):
        dataclasses.replace(TINY, downsampling="max")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_num_params_counts_the_model(name):
    config = VARIANTS[name]
    assert config.num_params() == sum(p.numel() for p in HourglassLM(config).parameters())


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_causality(name):
    """Changing token t leaves the logits before t unchanged and changes those at t (in every group phase)."""
    config = VARIANTS[name]
    model = build(config)
    k = total_factor(config)
    length = 3 * k + 2
    ids = torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids)
        for t in sorted({1, k - 1, k, k + 1, 2 * k, length - 1}):
            changed = ids.clone()
            changed[:, t] = (ids[:, t] + 1) % config.vocab_size
            new_logits = model(changed)
            assert (new_logits[:, :t] - logits[:, :t]).abs().max() <= 1e-6, t
            assert (new_logits[:, t] - logits[:, t]).abs().max() > 1e-3, t


def test_factor_one_is_a_plain_transformer():
    """A single level `n@1` is the plain pre-norm decoder: DecoderLM with the same weights, same logits."""
    config = dataclasses.replace(TINY, hierarchy="3@1")
    hourglass = build(config)
    plain = DecoderLM(dataclasses.replace(config.block_config(), n_layers=3)).eval()
    weights = {
        name.replace("stack.pre.blocks.", "layers.").replace("stack.pre.norm.", "norm."): tensor
        for name, tensor in hourglass.state_dict().items()
    }
    plain.load_state_dict(weights, strict=True)
    ids = torch.randint(0, config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hourglass(ids), plain(ids), rtol=1e-5, atol=1e-5)


def test_factor_one_valley_is_blocks_plus_a_residual():
    """At k = 1 shifting, average pooling and repeating are identities: the valley is norm(inner(x)) + x,
    written out here with the plain blocks of the same model."""
    config = dataclasses.replace(TINY, hierarchy="1@1 2@1 1@1", downsampling="average", upsampling="repeat")
    model = build(config)
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    stack, valley = model.stack, model.stack.valley
    positions = torch.arange(ids.shape[1])[None]
    rope = model.rotary(positions, torch.float32)

    def plain_blocks(group, x):
        for block in group.blocks:
            x = block(x, rope)
        return group.norm(x)

    with torch.no_grad():
        x = plain_blocks(stack.pre, model.embed(ids))
        x = valley.norm(plain_blocks(valley.inner.pre, x)) + x
        expected = model.logits(plain_blocks(stack.post, x))
        torch.testing.assert_close(model(ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_decode_matches_full_forward(name):
    """A ragged batch (prompt lengths a multiple of the total factor, not a multiple, and one token)
    prefilled, then decoded across several group boundaries: every step's logits equal the full forward's."""
    config = VARIANTS[name]
    model = build(config)
    k = total_factor(config)
    lengths = torch.tensor([2 * k, 2 * k + 1 + (k > 2), 1])
    steps = k + 3
    total = int(lengths.max()) + steps
    ids = torch.randint(0, config.vocab_size, (3, total), generator=torch.Generator().manual_seed(3))
    rows = torch.arange(3)
    with torch.no_grad():
        full = model(ids)
        state = model.init_state(3, total)
        prompt = ids[:, : int(lengths.max())]
        prompt = prompt.masked_fill(torch.arange(prompt.shape[1]) >= lengths[:, None], 0)  # right padding
        logits, state = model.prefill(prompt, lengths, state)
        torch.testing.assert_close(logits, full[rows, lengths - 1], rtol=1e-4, atol=1e-4)
        positions = lengths.clone()
        for _ in range(steps):
            logits, state = model.decode_step(ids[rows, positions], positions, state)
            torch.testing.assert_close(logits, full[rows, positions], rtol=1e-4, atol=1e-4)
            positions = positions + 1


def test_engine_generates_what_greedy_full_forwards_give():
    model = build(TINY)
    prompts, new_tokens = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11], [12]], 6
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(new_tokens):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
            expected.append(ids[len(prompt) :])
    assert Engine.from_model(model, "torch").generate(prompts, new_tokens) == expected


def test_state_spec_lists_every_cache_and_window():
    model = HourglassLM(TINY)
    spec = model.state_spec()
    keys = [entry.key for entry in spec]
    # blocks and resamplers have k, v; the two valleys have a window of k inputs and the kept shortened token
    assert len(keys) == len(set(keys)) == 2 * len(TINY.attention_layers()) + 2 * TINY.n_valleys
    state = model.init_state(3, 40)
    assert sorted(state) == sorted(keys)
    windows = [entry for entry in spec if entry.name == "window"]
    assert [entry.shape for entry in windows] == [("batch", 2, TINY.d_model)] * 2
    assert state[windows[0].key].shape == (3, 2, TINY.d_model)
    assert TINY.cache_bytes_per_token(torch.float16) == 2 * 10 * 2 * 16 * 2  # 6 blocks + 4 resamplers
    assert TINY.state_bytes(2, 100, torch.float32) == 2 * (100 * 2 * 10 * 2 * 16 * 4 + 2 * 3 * 64 * 4)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_capture_is_dynamic(phase):
    """torch.export with dynamic batch, prompt and cache; the program then runs at other sizes, including
    a prompt shorter than one group."""
    config = dataclasses.replace(TINY, hierarchy="1@1 1@2 1@4 1@2 1@1")
    model = build(config)
    captured = capture(model, phase)
    for batch, length, cache in ((3, 9, 20), (1, 1, 4)):
        args = example_inputs(model, phase, batch, length, cache)
        with torch.no_grad():
            expected = (model.prefill if phase == "prefill" else model.decode_step)(*args)
        actual = captured.module()(*example_inputs(model, phase, batch, length, cache))
        torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-5)


def test_registry_entry_builds_saves_and_loads(tmp_path):
    """zoo.build and a zoo-format checkpoint round trip through the family's registry entry."""
    model = zoo.build("hourglass-tiny", seed=3)
    assert isinstance(model, HourglassLM) and model.config == TINY
    ids = torch.randint(0, TINY.vocab_size, (2, 7), generator=torch.Generator().manual_seed(4))
    loaded = zoo.from_pretrained(zoo.save_pretrained(model, tmp_path / "hourglass"))
    assert loaded.config == TINY
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
