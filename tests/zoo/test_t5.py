"""The t5 family (T5 v1.1): logits and greedy generation against HF T5ForConditionalGeneration through the
checkpoint converter, cached decode against the full forward on ragged encoder batches, the cross cache
computed once per request, checkpoint errors, capture with dynamic shapes, and `zoo generate`."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import zoo
from passes.capture import capture
from runtime import Engine
from tests.conftest import informative_weights
from zoo import checkpoint, registry
from zoo.cli import main
from zoo.errors import CheckpointError, ContextLengthError
from zoo.models.t5 import SIZES, T5LM, convert
from zoo.models.t5.model import relative_position_bucket

TINY = SIZES["t5-tiny"]
ENCODER_LENGTHS = (17, 1, 33)  # a ragged batch: one token, and past the tiny config's max distance of 20


def hf_twin(config=TINY, seed: int = 0, untied: bool = True):
    """HF T5ForConditionalGeneration of `config` with O(1) logits. transformers v5 ties lm_head to shared
    whatever the config says; `untied` gives it its own matrix (T5 v1.1), as released checkpoints have."""
    transformers = pytest.importorskip("transformers")
    kwargs = convert.hf_config_from(config)
    kwargs.pop("model_type")
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kwargs))
    if untied:
        model.lm_head.weight = nn.Parameter(torch.empty_like(model.lm_head.weight))
    return informative_weights(model, seed).eval()


@pytest.fixture
def checkpoint_dir(tmp_path):
    """(directory written by HF's save_pretrained, the HF model)."""
    hf_model = hf_twin()
    hf_model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", hf_model


def encoder_batch(vocab: int, lengths=ENCODER_LENGTHS, seed: int = 0):
    """Right-padded encoder ids (B, S) (padding = token 0), lengths (B,), and HF's attention mask."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    ids = torch.randint(2, vocab, (len(lengths), int(lengths.max())), generator=generator)
    mask = torch.arange(ids.shape[1]) < lengths[:, None]
    return ids.masked_fill(~mask, 0), lengths, mask.long()


def decoder_inputs(vocab: int, batch: int, length: int, seed: int = 1):
    ids = torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = TINY.decoder_start_token_id
    return ids


def test_config_round_trips_and_counts_parameters(checkpoint_dir):
    path, hf_model = checkpoint_dir
    assert registry.load_config(path)[0] == TINY
    model = zoo.build("t5-tiny")
    assert (
        TINY.num_params() == sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf_model.parameters())
    )
    assert SIZES["t5-v1_1-base"].num_params() == 247_577_856  # about 248M (docs/algorithms.md §4.1)


@pytest.mark.parametrize("decoder_layers", [2, 3], ids=["as-encoder", "deeper-decoder"])
def test_logits_match_hf(tmp_path, decoder_layers):
    config = dataclasses.replace(TINY, n_decoder_layers=decoder_layers)
    hf_model = hf_twin(config)
    hf_model.save_pretrained(tmp_path / "hf")
    model = zoo.from_pretrained(tmp_path / "hf")
    assert model.config == config
    ids, lengths, mask = encoder_batch(TINY.vocab_size)
    decoder_ids = decoder_inputs(TINY.vocab_size, len(lengths), 26)  # decoder past the max distance too
    with torch.no_grad():
        want = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = model(ids, decoder_ids, lengths)
    assert want.abs().max() > 1.0  # informative logits, not all near zero
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_relative_position_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 301)[None]
    for buckets, distance in ((32, 128), (8, 20)):
        for bidirectional in (True, False):
            want = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
            got = relative_position_bucket(relative, bidirectional, buckets, distance)
            assert torch.equal(got, want), (buckets, distance, bidirectional)
            assert int(got.max()) == buckets - 1  # the clipped far bucket is reached


def test_untied_lm_head_is_read(checkpoint_dir):
    """The HF model's lm_head differs from its shared embedding, and ours follows the lm_head."""
    path, hf_model = checkpoint_dir
    model = zoo.from_pretrained(path)
    assert not torch.equal(hf_model.lm_head.weight, hf_model.shared.weight)
    torch.testing.assert_close(model.lm_head.weight, hf_model.lm_head.weight)
    torch.testing.assert_close(model.embed.weight, hf_model.shared.weight)


def test_v5_checkpoint_without_lm_head_uses_shared(tmp_path):
    """transformers v5 writes a T5 with tie_word_embeddings=false as tied and unscaled, without lm_head.weight."""
    hf_model = hf_twin(untied=False)
    hf_model.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    ids, lengths, mask = encoder_batch(TINY.vocab_size, (9, 4))
    decoder_ids = decoder_inputs(TINY.vocab_size, 2, 5)
    with torch.no_grad():
        want = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        torch.testing.assert_close(model(ids, decoder_ids, lengths), want, atol=1e-4, rtol=0)


def test_cached_decode_equals_full_forward():
    """prefill + decode_step on a ragged encoder batch, teacher-forced, against one full forward; the
    self-attention cache holds the full pass's keys and values, the mask each row's encoder length."""
    model = informative_weights(zoo.build("t5-tiny"))
    ids, lengths, _ = encoder_batch(TINY.vocab_size)
    steps = 12
    decoder_ids = decoder_inputs(TINY.vocab_size, len(lengths), steps)
    state = model.init_state(len(lengths), int(lengths.max()) + 3)  # slots past the encoder input too
    with torch.no_grad():
        full = model(ids, decoder_ids, lengths)
        logits, state = model.prefill(ids, lengths, state)
        cached = [logits]
        for position in range(1, steps):
            logits, state = model.decode_step(decoder_ids[:, position], torch.full_like(lengths, position), state)
            cached.append(logits)
        first = model.decoder.layers[0]  # its input is the decoder embedding: its keys are easy to recompute
        want_k, want_v = first.attn.keys_values(first.attn_norm(model.embed(decoder_ids)))
    torch.testing.assert_close(torch.stack(cached, 1), full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state["k0"][:, :, :steps], want_k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state["v0"][:, :, :steps], want_v, atol=1e-5, rtol=1e-5)
    assert torch.equal(state["encoder_mask0"], torch.arange(state["k0"].shape[2]) < lengths[:, None])


def test_greedy_generation_matches_hf(checkpoint_dir):
    path, hf_model = checkpoint_dir
    engine = Engine(zoo.from_pretrained(path))
    ids, lengths, mask = encoder_batch(TINY.vocab_size, (9, 1, 23, 14), seed=3)
    prompts = [row[:n].tolist() for row, n in zip(ids, lengths)]
    new_tokens = 8
    ours = engine.generate(prompts, new_tokens)
    theirs = hf_model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        decoder_start_token_id=0,
    )
    assert ours == theirs[:, 1:].tolist()  # HF's rows start with the decoder start token


def test_cross_cache_is_computed_once_per_request():
    model = zoo.build("t5-tiny")
    calls = {"cross": 0, "self": 0, "encoder": 0}

    def counter(key):
        def hook(module, args, output):
            calls[key] += 1

        return hook

    for layer in model.decoder.layers:
        layer.cross_attn.wk.register_forward_hook(counter("cross"))
        layer.cross_attn.wv.register_forward_hook(counter("cross"))
        layer.attn.wk.register_forward_hook(counter("self"))
    model.encoder.layers[0].attn.wk.register_forward_hook(counter("encoder"))
    new_tokens = 8
    tokens = Engine(model).generate([[5, 6, 7, 8], [9, 10]], new_tokens)
    assert [len(t) for t in tokens] == [new_tokens, new_tokens]
    layers = TINY.n_decoder_layers
    assert calls == {"cross": 2 * layers, "self": new_tokens * layers, "encoder": 1}


def test_engine_sizes_caches_and_checks_lengths():
    engine = Engine(zoo.build("t5-tiny"))
    context = TINY.max_seq_len
    assert engine.cache_length(40, 8) == 40 and engine.cache_length(3, 8) == 8
    # the encoder input and the decoder tokens each get the whole context
    assert len(engine.generate([[3] * context], 2)[0]) == 2
    with pytest.raises(ContextLengthError, match="decoder's context"):
        engine.check_request([[3]], context + 1)
    with pytest.raises(ContextLengthError, match="longer than the model's context"):
        engine.check_request([[3] * (context + 1)], 1)


def test_bad_checkpoint_keys_and_shapes(checkpoint_dir):
    path, _ = checkpoint_dir
    tensors = checkpoint.load_safetensors_dir(path)
    tensors.pop("decoder.block.1.layer.1.EncDecAttention.k.weight")
    tensors["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(3, 3)
    tensors["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = torch.zeros(3, 3)
    config = convert.config_from_hf(checkpoint.read_config_json(path))
    renamed, unexpected = convert.state_dict_from_hf(tensors, config)
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_state_dict_strict(T5LM(config), renamed, str(path), unexpected)
    message = str(error.value)
    assert "1 missing tensor(s):\n  decoder.layers.1.cross_attn.wk.weight" in message
    assert "1 unexpected tensor(s):\n  encoder.block.0.layer.1.DenseReluDense.wi.weight" in message
    assert "decoder.layers.0.attn.wq.weight: checkpoint (3, 3), model (48, 64)" in message


@pytest.mark.parametrize(
    "change, match",
    [
        ({"feed_forward_proj": "relu"}, "feed_forward_proj 'relu' is not supported"),
        ({"scale_decoder_outputs": True}, "tied lm_head with the decoder output scaled"),
    ],
)
def test_unsupported_configs_are_refused(checkpoint_dir, change, match):
    path, _ = checkpoint_dir
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(raw | change))
    with pytest.raises(CheckpointError, match=match):
        zoo.from_pretrained(path)


def test_v4_config_is_read(checkpoint_dir):
    """transformers v4 configs say tie_word_embeddings=false (v1.1) and carry decoder_start_token_id."""
    path, _ = checkpoint_dir
    raw = json.loads((path / "config.json").read_text())
    raw.pop("scale_decoder_outputs")
    (path / "config.json").write_text(json.dumps(raw | {"tie_word_embeddings": False, "decoder_start_token_id": 0}))
    assert registry.load_config(path)[0] == TINY


def test_capture_prefill_and_decode_with_dynamic_shapes():
    model = informative_weights(zoo.build("t5-tiny"))
    captured = {phase: capture(model, phase) for phase in ("prefill", "decode")}
    prefill, decode = captured["prefill"].module(), captured["decode"].module()
    assert captured["decode"].dynamic_axes["state.cross_k.0"] == {0: "batch", 2: "cache"}
    for lengths, cache in (((7,), 9), ((4, 13, 1), 16)):  # other batch, prompt and cache sizes than traced
        ids, lengths, _ = encoder_batch(TINY.vocab_size, lengths)
        with torch.no_grad():
            want, want_state = model.prefill(ids, lengths, model.init_state(len(lengths), cache))
            got, got_state = prefill(ids, lengths, model.init_state(len(lengths), cache))
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            tokens, positions = want.argmax(-1), torch.ones_like(lengths)
            want, want_state = model.decode_step(tokens, positions, want_state)
            got, got_state = decode(tokens, positions, got_state)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        for key in want_state:
            torch.testing.assert_close(got_state[key], want_state[key], atol=1e-4, rtol=1e-4, msg=key)


def test_cli_generate_reads_prompts_as_encoder_inputs():
    result = CliRunner().invoke(
        main,
        ["generate", "t5-tiny", "--prompt-ids", "5,6,7", "--prompt-ids", "9", "--max-new-tokens", "4", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["tokens"] == Engine(zoo.build("t5-tiny")).generate([[5, 6, 7], [9]], 4)
