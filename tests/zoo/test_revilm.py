"""The revilm family: Flamingo blocks against HF IDEFICS, the CLIP ViT against HF CLIP, the frozen-LM identity
at gates 0, media masking, cached decode against the full forward, the engine's image requests, and the
media and decode graphs on ONNX Runtime."""

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from runtime import Engine
from tests.conftest import informative_weights
from zoo.errors import ZooError
from zoo.models.revilm import convert
from zoo.models.revilm.config import SIZES
from zoo.models.revilm.model import RevilmLM, pack_captions
from zoo.nn.flamingo import GatedCrossAttentionBlock, PerceiverResampler, media_visibility
from zoo.nn.transformer import DecoderLM


def idefics_config():
    from transformers.models.idefics.configuration_idefics import IdeficsConfig

    config = IdeficsConfig(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=96,
        rms_norm_eps=1e-5,
        alpha_type="float",  # Flamingo: one scalar gate per sublayer
        alpha_initializer="zeros",
        qk_layer_norms=False,
        vision_config=dict(embed_dim=48, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=4),
        perceiver_config=dict(qk_layer_norms_perceiver=False),
    )
    config._attn_implementation = "eager"
    return config


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_perceiver_resampler_matches_idefics(act):
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

    hf = informative_weights(IdeficsPerceiverResampler(idefics_config(), 48, 3, 2, 16, 8)).eval()
    if act == "gelu":  # open_flamingo's FFN; IDEFICS's is ReLU, otherwise the same block
        for _, ff in hf.blocks:
            ff.act = nn.GELU()
    ours = PerceiverResampler(48, 3, 2, 16, 8, act=act).eval()
    ours.load_state_dict(convert.resampler_state_dict_from_idefics(hf.state_dict()))
    context = torch.randn(3, 17, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(context)
        torch.testing.assert_close(ours(context), expected, atol=1e-5, rtol=1e-4)
    assert expected.std() > 0.5


def test_gated_cross_attention_matches_idefics_with_media_masking():
    from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

    hf = informative_weights(IdeficsGatedCrossAttentionLayer(idefics_config(), 0)).eval()
    assert hf.alpha_cross_attn.abs() > 0.1 and hf.alpha_dense.abs() > 0.1  # gates open, so both paths count
    ours = GatedCrossAttentionBlock(64, 48, 4, 16, 96, 1e-5).eval()
    ours.load_state_dict(convert.xattn_state_dict_from_idefics(hf.state_dict()))
    generator = torch.Generator().manual_seed(1)
    x, media = torch.randn(2, 9, 64, generator=generator), torch.randn(2, 2 * 5, 48, generator=generator)
    locations = torch.zeros(2, 9, dtype=torch.bool)
    locations[0, [2, 6]] = True  # two images in row 0: text 0-1 sees none, 2-5 the first, 6-8 the second
    locations[1, [0, 4]] = True
    visible = media_visibility(locations, 2, 5)
    hf_mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        expected = hf(
            x, image_hidden_states=media, image_attention_mask=hf_mask, cross_attention_gate=visible.any(-1)[:, 0]
        )
        torch.testing.assert_close(ours(x, *ours.keys_values(media), visible), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ["CLIPVisionModelWithProjection", "CLIPVisionModel", "CLIPModel"])
def test_vit_matches_hf_clip(tmp_path, architecture):
    import transformers

    vision = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, projection_dim=24)  # fmt: skip
    if architecture == "CLIPModel":
        config = transformers.CLIPConfig(
            vision_config=vision,
            text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            projection_dim=24,
        )
    else:
        config = transformers.CLIPVisionConfig(**vision)
    hf = informative_weights(getattr(transformers, architecture)(config)).eval()
    hf.save_pretrained(tmp_path / "clip")
    ours = convert.load_clip_vision(tmp_path / "clip")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden, embedding = ours(pixels)
        if architecture == "CLIPModel":
            expected = hf.get_image_features(pixel_values=pixels)
            expected = expected if isinstance(expected, torch.Tensor) else expected.pooler_output
        else:
            out = hf(pixel_values=pixels)
            torch.testing.assert_close(hidden, out.last_hidden_state, atol=1e-4, rtol=1e-4)
            expected = out.image_embeds if architecture.endswith("Projection") else out.pooler_output
    assert embedding.shape == expected.shape == (2, 48 if architecture == "CLIPVisionModel" else 24)
    torch.testing.assert_close(embedding, expected, atol=1e-4, rtol=1e-4)


def test_a_clip_of_another_shape_is_refused(tmp_path):
    import transformers

    config = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64)  # fmt: skip
    transformers.CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    with pytest.raises(ZooError, match="does not match the model"):
        convert.load_vision_tower(zoo.build("revilm-tiny"), tmp_path / "clip")


@pytest.mark.parametrize("name", list(SIZES))
def test_analytic_param_count_equals_built_model(name):
    with torch.device("meta"):  # the large sizes are built without memory
        model = RevilmLM(zoo.get_config(name))
    assert sum(p.numel() for p in model.parameters()) == model.config.num_params()
    if name != "revilm-tiny":
        assert 0.35e9 < model.config.lm.num_params() < 1.5e9  # the paper's 0.4-1.5B LMs


def images_and_captions(batch: int, n_images: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, n_images, 3, 32, 32, generator=generator)
    retrieved = [[list(range(5 + row, 15 + row)), [7, 8, 9]][: 2 - row % 2] for row in range(batch)]
    return pixels, retrieved


def informative_revilm(seed: int = 0) -> RevilmLM:
    return informative_weights(zoo.build("revilm-tiny", seed=seed), seed)


def test_gates_at_zero_equal_the_frozen_lm():
    model = zoo.build("revilm-tiny")
    lm = DecoderLM(model.config.lm).eval()
    lm.load_state_dict(informative_weights(model.lm).state_dict())
    pixels, retrieved = images_and_captions(2, n_images=2)
    ids, lengths = pack_captions(retrieved, model.config)
    input_ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    locations = torch.zeros(2, 9, dtype=torch.bool)
    locations[:, [1, 5]] = True
    with torch.no_grad():
        assert torch.equal(model(input_ids, pixels, locations, ids, lengths), lm(input_ids))
        informative_weights(model)  # gates open: now the images and captions change the logits
        assert not torch.allclose(model(input_ids, pixels, locations, ids, lengths), lm(input_ids), atol=1e-3)


def test_media_masking_with_two_interleaved_images():
    model = informative_revilm()
    input_ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    locations = torch.zeros(1, 10, dtype=torch.bool)
    locations[0, [3, 7]] = True
    pixels = images_and_captions(1, n_images=2)[0]
    other_first, other_second = pixels.clone(), pixels.clone()
    other_first[:, 0] = torch.randn(3, 32, 32)
    other_second[:, 1] = torch.randn(3, 32, 32)
    with torch.no_grad():
        base, first, second = (model(input_ids, p, locations) for p in (pixels, other_first, other_second))
    # causal text before any image sees neither; the first image reaches text from position 3 on
    torch.testing.assert_close(first[:, :3], base[:, :3], atol=0, rtol=0)
    assert (first[:, 3:] - base[:, 3:]).abs().amax(-1).min() > 1e-3
    torch.testing.assert_close(second[:, :7], base[:, :7], atol=0, rtol=0)
    assert (second[:, 7:] - base[:, 7:]).abs().amax(-1).min() > 1e-3
    # within one block: text after the second image sees only the second image's media tokens
    block = model.media_xattn["0"]
    x = torch.randn(1, 10, 64)
    latents = torch.randn(1, 2 * 8, 48)
    changed = latents.clone()
    changed[:, :8] = torch.randn(8, 48)
    visible = media_visibility(locations, 2, 8)
    with torch.no_grad():
        a, b = (block(x, *block.keys_values(m), visible) for m in (latents, changed))
        no_media = x + torch.tanh(block.alpha_dense) * block.mlp(block.post_attention_layernorm(x))
    torch.testing.assert_close(a[:, 7:], b[:, 7:], atol=0, rtol=0)
    assert (a[:, 3:7] - b[:, 3:7]).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(a[:, :3], no_media[:, :3])  # before any image: zero cross-attention output


def test_cached_decode_equals_full_forward():
    model = informative_revilm()
    pixels, retrieved = images_and_captions(3)
    pixels = pixels[:, 0]
    ids, caption_lengths = pack_captions(retrieved, model.config)
    prompt_lengths = torch.tensor([5, 2, 7])
    steps = 4
    full = torch.randint(0, 256, (3, 7 + steps), generator=torch.Generator().manual_seed(3))
    locations = torch.zeros_like(full, dtype=torch.bool)
    locations[:, 0] = True  # the image precedes the text: every token sees it
    with torch.no_grad():
        state = model.encode_media(pixels, ids, caption_lengths, model.init_state(3, 7 + steps))
        logits, state = model.prefill(full[:, :7], prompt_lengths, state)
        for step in range(steps):
            positions = prompt_lengths + step
            for row in range(3):
                sequence = torch.cat([full[row, : prompt_lengths[row]], full[row, 7 : 7 + step]])[None]
                expected = model(sequence, pixels[row : row + 1, None], locations[row : row + 1, : sequence.shape[1]],
                                 ids[row : row + 1], caption_lengths[row : row + 1])[0, -1]  # fmt: skip
                torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)
            logits, state = model.decode_step(full[:, 7 + step], positions, state)


def test_engine_generates_from_images_and_checks_requests():
    model = informative_revilm()
    pixels, retrieved = images_and_captions(2)
    pixels = pixels[:, 0]
    engine = Engine(model)
    tokens = engine.generate([[1, 2, 3], [4, 5]], 3, images=pixels, retrieved=retrieved)
    with torch.no_grad():  # greedy from the full forward, one row at a time
        ids, lengths = pack_captions(retrieved, model.config)
        for row, prompt in enumerate([[1, 2, 3], [4, 5]]):
            sequence = torch.tensor([prompt])
            for _ in range(3):
                locations = torch.zeros_like(sequence, dtype=torch.bool)
                locations[:, 0] = True
                logits = model(
                    sequence, pixels[row : row + 1, None], locations, ids[row : row + 1], lengths[row : row + 1]
                )
                sequence = torch.cat([sequence, logits[:, -1:].argmax(-1)], dim=1)
            assert tokens[row] == sequence[0, len(prompt) :].tolist()
    assert engine.generate([[1, 2, 3]], 3, images=pixels[:1]) != tokens[:1]  # the captions matter
    with pytest.raises(ZooError, match="needs one image per prompt"):
        engine.generate([[1, 2]], 2)
    with pytest.raises(ZooError, match="one per prompt"):
        engine.generate([[1, 2], [3]], 2, images=pixels[:1])
    with pytest.raises(ZooError, match="reads at most 2"):
        engine.generate([[1, 2]], 2, images=pixels[:1], retrieved=[[[1], [2], [3]]])
    with pytest.raises(ZooError, match="reads text only"):
        Engine(zoo.build("llama-tiny")).generate([[1, 2]], 2, images=pixels[:1])


def test_media_and_decode_graphs_on_onnxruntime(tmp_path):
    """The media encoder graph (export/media.py) and the generic decode graph (export/onnx.py), chained on
    ONNX Runtime: the media graph's state outputs feed the decode graph, whose logits match torch's."""
    import onnxruntime as ort

    from export.media import export_media_onnx
    from export.onnx import export_graph, save_graph
    from zoo.errors import OutputError

    model = informative_revilm().eval()
    path = export_media_onnx(model, tmp_path / "media.onnx")
    with pytest.raises(OutputError, match="overwrite"):
        export_media_onnx(model, path)
    (tmp_path / "notes.onnx").write_text("user file")
    with pytest.raises(OutputError, match="not a zoo media graph"):
        export_media_onnx(model, tmp_path / "notes.onnx", overwrite=True)
    pixels, retrieved = images_and_captions(3)
    ids, lengths = pack_captions(retrieved, model.config)
    media = ort.InferenceSession(str(path))
    outputs = media.run(
        None, {"pixel_values": pixels[:, 0].numpy(), "caption_ids": ids.numpy(), "caption_lengths": lengths.numpy()}
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(outputs[0]), model.embed_image(pixels[:, 0]), atol=1e-5, rtol=1e-4)
        state = model.encode_media(pixels[:, 0], ids, lengths, model.init_state(3, 9))
        _, state = model.prefill(torch.randint(0, 256, (3, 6)), torch.tensor([6, 3, 4]), state)
    by_name = dict(zip((o.name for o in media.get_outputs()), outputs))
    for entry in model.state_spec():
        if entry.qualified_name in by_name:
            np.testing.assert_allclose(by_name[entry.qualified_name], state[entry.key].numpy(), atol=1e-5, rtol=1e-4)
    save_graph(export_graph(model, "decode", fused=False), tmp_path, "decode", 1 << 30)
    decode = ort.InferenceSession(str(tmp_path / "decode.onnx"))
    tokens, positions = torch.tensor([3, 9, 200]), torch.tensor([6, 3, 4])
    feeds = {"tokens": tokens.numpy(), "positions": positions.numpy()}
    feeds |= {e.qualified_name: by_name.get(e.qualified_name, state[e.key].numpy()) for e in model.state_spec()}
    logits = decode.run(["logits"], feeds)[0]
    with torch.no_grad():
        expected, _ = model.decode_step(tokens, positions, state)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)
