"""Generation: cached decode against one full forward, greedy against HF's generate, request errors."""

import pytest
import torch

import zoo
from runtime import Engine
from tests.conftest import informative_weights
from zoo.errors import ContextLengthError, MissingDependencyError, ZooError
from zoo.models.gpt import GPTConfig
from zoo.models.llama import LlamaConfig
from zoo.models.mamba2 import HybridConfig, Mamba2Config
from zoo.models.moe import MoEConfig
from zoo.registry import build_from_config

LLAMA = LlamaConfig(vocab_size=101, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=128)
GPT = GPTConfig(vocab_size=101, d_model=48, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64)
MAMBA2 = Mamba2Config(vocab_size=101, d_model=32, n_layers=2, d_state=8, mamba_head_dim=8, n_groups=2, chunk_size=8)
HYBRID = HybridConfig(
    vocab_size=101,
    d_model=32,
    n_layers=4,
    pattern="M*-M",
    d_state=8,
    mamba_head_dim=8,
    n_groups=2,
    chunk_size=8,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    max_seq_len=128,
)
MOE = MoEConfig(
    vocab_size=101,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=24,
    n_experts=6,
    top_k=2,
    d_expert=24,
    routing="topk-softmax",
    max_seq_len=128,
)
CONFIGS = [LLAMA, GPT, MAMBA2, HYBRID, MOE]
CONFIG_IDS = ["llama", "gpt", "mamba2", "hybrid", "moe"]
PROMPT_LENGTHS = (5, 1, 12, 8, 17)  # different lengths in one batch: one token, and across 8-token chunks


def random_prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_cached_decode_matches_full_forward(config):
    """Teacher forcing: prefill ragged prompts, feed a fixed continuation one token at a time, and compare
    the logits of every step with one full forward over each row's whole sequence."""
    model = informative_weights(build_from_config(config))
    prompts = random_prompts(config.vocab_size, PROMPT_LENGTHS)
    steps = 9
    continuation = random_prompts(config.vocab_size, [steps] * len(prompts), seed=1)
    lengths = torch.tensor(PROMPT_LENGTHS)
    ids = torch.zeros(len(prompts), max(PROMPT_LENGTHS), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p)
    with torch.no_grad():
        state = model.init_state(len(prompts), max(PROMPT_LENGTHS) + steps)
        logits, state = model.prefill(ids, lengths, state)
        step_logits = [logits]
        for t in range(steps):
            tokens = torch.tensor([c[t] for c in continuation])
            logits, state = model.decode_step(tokens, lengths + t, state)
            step_logits.append(logits)
        for row, (prompt, cont) in enumerate(zip(prompts, continuation)):
            full = model(torch.tensor([prompt + cont]))[0]
            expected = full[len(prompt) - 1 : len(prompt) + steps]
            got = torch.stack([s[row] for s in step_logits])
            assert expected.abs().max() > 1.0
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama-tiny", "mamba2-hybrid-tiny", "moe-tiny"])
def test_compiled_backend_matches_eager(name):
    model = zoo.build(name, seed=4)
    prompts = random_prompts(256, (3, 17, 9))
    eager = Engine.from_model(model, "torch").generate(prompts, 12)
    compiled = Engine.from_model(model, "compiled").generate(prompts, 12)
    assert compiled == eager


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_greedy_generation_matches_hf_generate(hf_checkpoint, config):
    path, hf_model = hf_checkpoint(config)
    engine = Engine.load(str(path))
    prompts = random_prompts(config.vocab_size, PROMPT_LENGTHS, seed=2)
    new_tokens = 16
    ours = engine.generate(prompts, new_tokens)
    for prompt, tokens in zip(prompts, ours):
        expected = hf_model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )[0, len(prompt) :].tolist()
        assert tokens == expected


def test_eos_stops_each_row_and_is_kept():
    model = zoo.build("llama-tiny", seed=0)
    engine = Engine.from_model(model)
    prompts = random_prompts(256, (4, 6))
    free = engine.generate(prompts, 10)
    eos = free[0][3]
    stopped = engine.generate(prompts, 10, eos_token_id=eos)
    for full, cut in zip(free, stopped):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert cut == expected
    assert len(stopped[0]) <= 4 and stopped[0][-1] == eos


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    engine = Engine.from_model(zoo.build("llama-tiny", seed=0))
    prompts = random_prompts(256, (4, 6))
    a = engine.generate(prompts, 8, temperature=1.0, seed=7)
    b = engine.generate(prompts, 8, temperature=1.0, seed=7)
    c = engine.generate(prompts, 8, temperature=1.0, seed=8)
    assert a == b and a != c
    assert engine.generate(prompts, 8, temperature=0.7, top_k=1, seed=3) == engine.generate(prompts, 8)
    assert engine.generate(prompts, 8, temperature=0.7, top_p=1e-6, seed=3) == engine.generate(prompts, 8)


def test_request_errors_name_the_problem():
    engine = Engine.from_model(zoo.build("llama-tiny"))  # context 256, vocab 256
    with pytest.raises(ContextLengthError, match="prompt 1 has 300 tokens, longer than the model's context of 256"):
        engine.generate([[1, 2], [3] * 300], 4)
    with pytest.raises(ContextLengthError, match="ask for at most 56 new tokens"):
        engine.generate([[1] * 200], 57)
    with pytest.raises(ZooError, match="prompt 0 is empty"):
        engine.generate([[]], 4)
    with pytest.raises(ZooError, match=r"outside the vocabulary \[0, 256\): \[256, -1\]"):
        engine.generate([[1, 256, -1]], 4)
    with pytest.raises(ZooError, match="unknown backend 'tensorrtt'"):
        Engine.from_model(zoo.build("llama-tiny"), backend="tensorrtt")
    with pytest.raises(MissingDependencyError, match=r"tensorrt is not installed.*graph-zoo\[tensorrt\]"):
        Engine.from_model(zoo.build("llama-tiny"), backend="tensorrt")
    with pytest.raises(ZooError, match="onnxruntime backend runs exported artifacts"):
        Engine.from_model(zoo.build("llama-tiny"), backend="onnxruntime")
    with pytest.raises(ValueError, match="top_p must be in"):
        engine.generate([[1]], 2, temperature=1.0, top_p=1.5)


def test_weight_layouts_change_strides_not_results():
    model = zoo.build("llama-tiny", seed=5)
    wq = model.layers[0].attn.wq.weight
    before = wq.detach().clone()
    prompts = random_prompts(256, (3, 7))
    row = Engine.from_model(model, weight_layout="row-major").generate(prompts, 6)
    assert wq.is_contiguous()
    column = Engine.from_model(model, weight_layout="column-major").generate(prompts, 6)
    assert wq.T.is_contiguous() and not wq.is_contiguous()
    assert torch.equal(wq, before) and column == row
    with pytest.raises(ZooError, match="unknown weight layout"):
        Engine.from_model(model, weight_layout="diagonal")
