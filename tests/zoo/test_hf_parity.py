"""Logits parity with HF LlamaForCausalLM and GPT2LMHeadModel through zoo.from_pretrained."""

import json

import pytest
import torch

import zoo
from tests.conftest import assert_logits_match_hf
from zoo.models.gpt import GPTConfig
from zoo.models.llama import LlamaConfig
from zoo.nn.rope import rope_inv_freq

LENGTHS = (1, 7, 33)

LLAMA_VARIANTS = {
    "gqa-untied": dict(vocab_size=211, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96),
    "mha-tied": dict(vocab_size=97, d_model=48, n_layers=3, n_heads=3, d_ff=80, tie_embeddings=True),
    "mqa-bias-headdim": dict(
        vocab_size=128,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=1,
        head_dim=24,
        d_ff=96,
        attention_bias=True,
        mlp_bias=True,
    ),
    "llama3-rope": dict(
        vocab_size=128,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        rope_theta=500000.0,
        max_seq_len=512,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
}


@pytest.mark.parametrize("variant", sorted(LLAMA_VARIANTS))
def test_llama_logits_match_hf(hf_checkpoint, variant):
    config = LlamaConfig(**LLAMA_VARIANTS[variant])
    path, hf_model = hf_checkpoint(config)
    model = zoo.from_pretrained(path)
    assert model.config == config  # the HF config maps back to the same zoo config
    assert_logits_match_hf(model, hf_model, config.vocab_size, LENGTHS)


def test_llama3_rope_scaling_changes_the_logits(hf_checkpoint):
    """Guards the llama3 variant above: without its scaling the same weights give other logits."""
    config = LlamaConfig(**LLAMA_VARIANTS["llama3-rope"])
    path, _ = hf_checkpoint(config)
    scaled = zoo.from_pretrained(path)
    unscaled = zoo.from_pretrained(path)
    unscaled.rotary.inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, None)
    ids = torch.arange(60)[None] % config.vocab_size
    assert (scaled(ids) - unscaled(ids)).abs().max() > 1e-2


def test_gpt2_logits_match_hf(hf_checkpoint):
    config = GPTConfig(vocab_size=131, d_model=48, n_layers=2, n_heads=4, d_ff=160, max_seq_len=64)
    path, hf_model = hf_checkpoint(config)
    model = zoo.from_pretrained(path)
    assert model.config == config
    assert_logits_match_hf(model, hf_model, config.vocab_size, LENGTHS)


def test_sharded_checkpoint_loads(hf_checkpoint):
    config = LlamaConfig(**LLAMA_VARIANTS["gqa-untied"])
    path, hf_model = hf_checkpoint(config, max_shard_size="40KB")
    assert len(list(path.glob("*.safetensors"))) > 1 and (path / "model.safetensors.index.json").is_file()
    assert_logits_match_hf(zoo.from_pretrained(path), hf_model, config.vocab_size, (9,))


def test_v4_style_rope_config_is_read(hf_checkpoint):
    """transformers v4 wrote rope_theta + rope_scaling (with "type"); v5 writes rope_parameters."""
    config = LlamaConfig(**LLAMA_VARIANTS["llama3-rope"])
    path, _ = hf_checkpoint(config)
    raw = json.loads((path / "config.json").read_text())
    params = raw.pop("rope_parameters")
    raw["rope_theta"] = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")
    raw["rope_scaling"] = params
    (path / "config.json").write_text(json.dumps(raw))
    assert zoo.from_pretrained(path).config == config


def test_bfloat16_checkpoint_keeps_fp32_rope(hf_checkpoint):
    config = LlamaConfig(**LLAMA_VARIANTS["gqa-untied"])
    path, hf_model = hf_checkpoint(config)
    model = zoo.from_pretrained(path, dtype=torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    assert model.rotary.inv_freq.dtype == torch.float32
    ids = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = model(ids).float(), hf_model(ids).logits
    # a whole bf16 forward against fp32: relative L2 error within the documented whole-model bf16 tolerance
    # (2e-2; rounding alone gives about 1e-2 here, a wrong scale or rotation gives O(1))
    assert (ours - reference).norm() / reference.norm() < 2e-2
