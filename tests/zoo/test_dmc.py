"""DMC: the all-append case against HF Llama, cached decode against the eval forward with real merging,
and the windowed / unbounded merge rules against a plain per-head loop."""

import json

import pytest
import torch
from click.testing import CliRunner

import zoo
from tests.conftest import informative_weights
from zoo.cli import main
from zoo.models.dmc.retrofit import dmc_config_from, dmc_from_llama
from zoo.models.llama import LlamaConfig
from zoo.nn.dmc import decisions, partial_accumulation, zero_last_channel
from zoo.nn.rope import apply_rope
from zoo.registry import build_from_config

LLAMA = LlamaConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=128)
D = LLAMA.head_dim


def hf_rope_without_last_channel(original):
    """HF's apply_rotary_pos_emb with channel D-1 of q and k zeroed before and after rotating, as the
    DMC reference's rotary kernel does."""

    def patched(q, k, cos, sin, *args, **kwargs):
        q, k = original(zero_last_channel(q), zero_last_channel(k), cos, sin, *args, **kwargs)
        return zero_last_channel(q), zero_last_channel(k)

    return patched


def test_all_append_equals_hf_llama_without_channel_d_minus_1(hf_checkpoint, monkeypatch):
    from transformers.models.llama import modeling_llama

    path, hf_model = hf_checkpoint(LLAMA)
    dmc = dmc_from_llama(zoo.from_pretrained(path))  # decision rows zeroed: k[D-1] - 5 = -5, all append
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        plain_hf = hf_model(ids).logits
        monkeypatch.setattr(
            modeling_llama, "apply_rotary_pos_emb", hf_rope_without_last_channel(modeling_llama.apply_rotary_pos_emb)
        )
        for layer in hf_model.model.layers:  # the same zeroed rows on the HF side
            for proj, heads in ((layer.self_attn.q_proj, 4), (layer.self_attn.k_proj, 2)):
                proj.weight[torch.arange(heads) * D + D - 1] = 0
        expected = hf_model(ids).logits
        got = dmc(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (plain_hf - expected).abs().max() > 1e-2  # dropping channel D-1 does change the model


def merging_dmc(window: int, seed: int = 0, merge_period: int | None = None):
    """A DMC model whose decision channel merges about half the steps, with heads that differ (or, with
    merge_period, whose every merge_period-th token opens a slot)."""
    config = dmc_config_from(LLAMA, window=window, merge_period=merge_period)
    model = informative_weights(build_from_config(config), seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            rows = torch.arange(2) * D + D - 1
            layer.attn.wk.weight[rows] = torch.randn(2, 64, generator=g) * 2.5 + 0.1
            layer.attn.wq.weight[torch.arange(4) * D + D - 1] = torch.randn(4, 64, generator=g) * 0.5
    return model


@pytest.mark.parametrize("window", [12, 3, 0], ids=["window-12", "window-3", "unbounded"])
def test_cached_decode_matches_eval_forward_with_merging(window):
    model = merging_dmc(window)
    lengths = (30, 7, 19, 1)
    steps = 12
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]
    continuation = torch.randint(0, 97, (len(prompts), steps), generator=g)
    ids = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p)
    with torch.no_grad():
        state = model.init_state(len(prompts), max(lengths) + steps)
        positions = torch.tensor(lengths)
        logits, state = model.prefill(ids, positions, state)
        outputs = [logits]
        for t in range(steps):
            logits, state = model.decode_step(continuation[:, t], positions + t, state)
            outputs.append(logits)
        for row, prompt in enumerate(prompts):
            full = model(torch.tensor([prompt + continuation[row].tolist()]))[0]
            expected = full[len(prompt) - 1 : len(prompt) + steps]
            torch.testing.assert_close(torch.stack([o[row] for o in outputs]), expected, atol=1e-4, rtol=0)
        # the decisions really merged, about half the time, and heads ended at different lengths
        total = (positions + steps).sum().item()
        slots = torch.stack([state[f"slots{i}"] for i in range(2)])  # (layers, B, Hkv)
        merged = 1 - slots.sum().item() / (total * 2 * 2)
        assert 0.25 < merged < 0.75, merged
        assert len(set(slots.flatten().tolist())) > 4


def per_head_loop(k, v, alpha, omega, window):
    """The merge rule, one token at a time (docs/algorithms.md §1.2): slot = weighted mean of the last <= W tokens of
    its group (W = 0: all of them), its key rotated at its newest token. Returns [(key mean, value mean,
    newest position)] per slot, and the open slot's (key, value) mean after every position."""
    slots, means, members = [], [], []
    for t in range(len(alpha)):
        if t == 0 or alpha[t] == 0:
            members = [t]
            slots.append(None)
        else:
            members.append(t)
        window_members = members[-window:] if window else members
        weight = sum(omega[s] for s in window_members)
        key = sum(omega[s] * k[s] for s in window_members) / weight
        value = sum(omega[s] * v[s] for s in window_members) / weight
        slots[-1] = (key, value, t)
        means.append((key, value))
    return slots, means


@pytest.mark.parametrize("window", [4, 0], ids=["windowed", "unbounded"])
def test_merge_rule_against_a_per_head_loop(window):
    g = torch.Generator().manual_seed(0)
    B, Hkv, L = 2, 3, 29
    x = torch.randn(B, Hkv, L, 2 * D, generator=g)
    alpha = (torch.rand(B, Hkv, L, generator=g) < 0.7).float()  # long groups, beyond the window
    alpha[..., 0] = 0
    omega = torch.rand(B, Hkv, L, generator=g) + 0.05
    acc, weight = partial_accumulation(x, alpha, omega, window)
    pooled = acc / weight[..., None]
    for b in range(B):
        for h in range(Hkv):
            _, means = per_head_loop(x[b, h, :, :D], x[b, h, :, D:], alpha[b, h], omega[b, h], window)
            expected = torch.stack([torch.cat([key, value]) for key, value in means])
            torch.testing.assert_close(pooled[b, h], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [3, 0], ids=["windowed", "unbounded"])
def test_prefill_cache_holds_the_loops_slots(window):
    model = merging_dmc(window, seed=3)
    attn = model.layers[0].attn
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 25, 64, generator=g)
    lengths = torch.tensor([25, 16])
    state = {k: v for k, v in model.init_state(2, 40).items() if k.endswith("0")}
    state = {k[:-1]: v for k, v in state.items()}
    positions = torch.arange(25).expand(2, 25)
    with torch.no_grad():
        attn(x, model.rope(positions, x.dtype), state, lengths)
        q, k, v = attn.project(x, rope=None)
        logits, omega = decisions(q, k, attn.init_val)
    alpha = (logits > 0).float()
    alpha[..., 0] = 0
    for b, n in enumerate(lengths.tolist()):
        for h in range(2):
            slots, _ = per_head_loop(
                zero_last_channel(k)[b, h, :n], v[b, h, :n], alpha[b, h, :n], omega[b, h, :n], window
            )
            assert state["slots"][b, h] == len(slots)
            for i, (key, value, newest) in enumerate(slots):
                cos, sin = model.rope(torch.tensor([[newest]]), x.dtype)
                rotated = zero_last_channel(apply_rope(key[None, None, None], cos, sin))[0, 0, 0]
                torch.testing.assert_close(state["k"][b, h, i], rotated, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(state["v"][b, h, i], value, atol=1e-5, rtol=1e-5)


def test_generation_reports_compression():
    """The reported ratio is tokens cached over slots kept, recounted here by replaying the generation."""
    from runtime import Engine

    model = merging_dmc(12)
    prompts, new = [list(range(1, 14)), [5, 6, 7]], 20
    result = Engine.from_model(model).generate_with_stats(prompts, new)
    with torch.no_grad():
        state = model.init_state(2, 40)
        lengths = torch.tensor([13, 3])
        model.prefill(torch.tensor([prompts[0], prompts[1] + [0] * 10]), lengths, state)
        for t in range(new - 1):  # the last generated token is sampled, not cached
            tokens = torch.tensor([result.tokens[0][t], result.tokens[1][t]])
            model.decode_step(tokens, lengths + t, state)
    cached = (13 + new - 1) + (3 + new - 1)
    per_layer = [cached * 2 / state[f"slots{i}"].sum().item() for i in range(2)]  # 2 KV heads
    compression = result.state_summary["compression"]
    assert compression["per_layer"] == pytest.approx(per_layer)
    assert compression["overall"] == pytest.approx(
        cached * 2 * 2 / sum(state[f"slots{i}"].sum().item() for i in range(2))
    )
    assert compression["overall"] > 1.5  # the merging weights do compress


def record_resizes(model, monkeypatch) -> list[int]:
    """The capacities model.resize_cache is called with, from now on."""
    capacities, resize = [], model.resize_cache

    def recorded_resize(state, capacity):
        capacities.append(capacity)
        return resize(state, capacity)

    monkeypatch.setattr(model, "resize_cache", recorded_resize)
    return capacities


def test_engine_sizes_the_compressed_cache_by_slots_in_use(monkeypatch):
    """The engine cuts the cache to the slots in use after prefill and grows it when a head fills it; the
    tokens are those of a greedy decode with a cache sized for every token."""
    from runtime import Engine, engine

    monkeypatch.setattr(engine, "CACHE_BUCKET", 4)  # small buckets, so the cache grows several times
    model = merging_dmc(12, merge_period=3)  # every third token opens a slot: compression ratio 3
    capacities = record_resizes(model, monkeypatch)
    prompts, new = [list(range(1, 31)), [5, 6, 7]], 40
    result = Engine.from_model(model).generate_with_stats(prompts, new)
    with torch.no_grad():
        state = model.init_state(2, 30 + new)
        lengths = torch.tensor([30, 3])
        logits, _ = model.prefill(torch.tensor([prompts[0], prompts[1] + [0] * 27]), lengths, state)
        expected = [logits.argmax(-1)]
        for t in range(new - 1):
            logits, _ = model.decode_step(expected[-1], lengths + t, state)
            expected.append(logits.argmax(-1))
    assert result.tokens == torch.stack(expected, dim=1).tolist()
    used = max(state[f"slots{i}"].max().item() for i in range(2))
    assert capacities == [12, 20, 32]  # 10 slots + 1 after the prompt, then grown by half as heads filled
    assert used == 23  # ceil(69 / 3)
    full_cache_bytes = sum(t.nbytes for t in state.values())
    assert result.state_bytes < 0.6 * full_cache_bytes


@pytest.mark.parametrize("period", [1, 2, 4, 8])
def test_merge_period_gives_the_benchmarks_compression_ratio(period):
    """benchmarks/dmc_decode.py sets decisions with dmc_merge_period: every head then holds ceil(tokens / P)
    slots after a one-shot prefill and decoding, and the logits are the eval forward's."""
    model = merging_dmc(12, merge_period=period)
    ids = torch.randint(0, 97, (1, 29), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        state = model.init_state(1, 29)
        model.prefill(ids[:, :21], torch.tensor([21]), state)
        for t in range(21, 28):
            logits, _ = model.decode_step(ids[:, t], torch.tensor([t]), state)
        torch.testing.assert_close(logits, model(ids[:, :28])[:, -1], atol=1e-4, rtol=0)
    for i in range(2):
        assert (state[f"slots{i}"] == -(-28 // period)).all()


@pytest.mark.slow
def test_compiled_engine_matches_eager_through_cache_growth(monkeypatch):
    """The compiled decode step writes the ragged cache in place and recompiles as the cache grows."""
    from runtime import Engine, engine

    monkeypatch.setattr(engine, "CACHE_BUCKET", 8)
    model = merging_dmc(12)
    prompts = [list(range(1, 31)), [5, 6, 7], list(range(40, 51))]
    eager = Engine.from_model(model, "torch").generate_with_stats(prompts, 24)
    capacities = record_resizes(model, monkeypatch)
    compiled = Engine.from_model(model, "compiled").generate_with_stats(prompts, 24)
    assert len(capacities) >= 3  # cut after the prefill, then grown at least twice: three graphs
    assert compiled.tokens == eager.tokens
    assert compiled.state_summary == eager.state_summary


def test_compressed_capacity_policy(monkeypatch):
    from runtime import engine

    monkeypatch.setattr(engine, "CACHE_BUCKET", 8)
    assert engine.compressed_capacity(10, 40, 100, after_prefill=True) == 16  # cut to the slots in use + 1
    assert engine.compressed_capacity(15, 16, 100) == 16  # a slot is free
    assert engine.compressed_capacity(16, 16, 100) == 24  # full: half as large again
    assert engine.compressed_capacity(64, 64, 70) == 70  # never past the limit


def test_retrofit_cli_writes_a_dmc_checkpoint(tmp_path):
    zoo.save_pretrained(informative_weights(build_from_config(LLAMA)), tmp_path / "llama")
    result = CliRunner().invoke(
        main, ["retrofit-dmc", "--from", str(tmp_path / "llama"), "--out", str(tmp_path / "dmc")]
    )
    assert result.exit_code == 0, result.output
    model = zoo.from_pretrained(tmp_path / "dmc")
    assert model.config.family == "dmc" and model.config.dmc_window == 12
    wk = model.layers[1].attn.wk.weight
    assert wk[D - 1].abs().sum() == 0 and wk[2 * D - 1].abs().sum() == 0 and wk[D - 2].abs().sum() > 0


def test_soft_accumulation_with_hard_decisions_matches_the_loop():
    from zoo.nn.dmc import soft_partial_accumulation

    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 21, 2 * D, generator=g)
    alpha = (torch.rand(1, 2, 21, generator=g) < 0.6).float()
    alpha[..., 0] = 0
    omega = torch.rand(1, 2, 21, generator=g) + 0.05
    for window in (5, 0):
        acc, weight = soft_partial_accumulation(x, alpha, omega, window)
        for h in range(2):
            _, means = per_head_loop(x[0, h, :, :D], x[0, h, :, D:], alpha[0, h], omega[0, h], window)
            expected = torch.stack([torch.cat([key, value]) for key, value in means])
            torch.testing.assert_close((acc / weight[..., None])[0, h], expected, atol=1e-5, rtol=1e-5)


def test_dmc_loss_is_one_sided_and_trains_the_decision_channel():
    from zoo.models.dmc.retrofit import dmc_loss, forward_with_decisions

    torch.manual_seed(0)
    model = dmc_from_llama(informative_weights(build_from_config(LLAMA)))
    model.train()
    ids = torch.randint(0, 97, (2, 40))
    _, decisions = forward_with_decisions(model, ids)
    assert decisions.shape == (2, 2)  # (layers, batch)
    assert 0 <= decisions.max() < 0.05  # zeroed rows: append
    assert not any("mean_decision" in vars(layer.attn) for layer in model.layers)  # no state left on modules
    loss = dmc_loss(decisions, target_cr=4.0)  # prior 0.75 > decisions: penalised
    assert loss > 0.5
    loss.backward()
    wk = model.layers[0].attn.wk.weight
    assert wk.grad[D - 1].abs().sum() > 0  # the gradient reaches the decision rows
    assert dmc_loss(decisions, target_cr=1.0).item() == 0.0  # prior 0: nothing to penalise


def test_forward_with_decisions_is_the_models_forward():
    from zoo.models.dmc.retrofit import forward_with_decisions

    model = merging_dmc(12).eval()
    ids = torch.randint(0, 97, (3, 21), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, decisions = forward_with_decisions(model, ids)
        torch.testing.assert_close(logits, model(ids))
    assert 0.25 < decisions.mean() < 0.75  # hard decisions of the merging model


@pytest.mark.slow
def test_retrofit_on_text_reaches_cr_2_within_10_percent_loss():
    """Issue 3's demonstration, scaled down (benchmarks/dmc_retrofit.py runs the larger one): a byte-level
    Llama pretrained on Python's standard-library sources, converted and retrofitted towards CR 4. The hard
    (inference) decisions must reach CR >= 2 with the held-out loss within 10% of the converted model's,
    and within 10% of the plain Llama trained as many steps more (so the extra training alone does not
    hide the cost of compressing)."""
    from benchmarks.dmc_retrofit import demonstrate

    config = LlamaConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192, max_seq_len=256)
    result = demonstrate(
        config, 400_000, seq_len=64, pretrain_steps=300, retrofit_steps=200, target_cr=4.0, lr=3e-3, log=lambda _: None
    )
    start, final = result["history"][0], result["history"][-1]
    assert start["cr"] == pytest.approx(1.0) and start["loss"] == pytest.approx(result["start_loss"])
    assert final["cr"] >= 2.0
    assert final["loss"] <= 1.1 * result["start_loss"]
    assert final["loss"] <= 1.1 * result["control_loss"]


def megatron_state(model) -> dict:
    """A DMC model's weights under Megatron-Core names, with linear_qkv interleaved per group."""
    c = model.config
    G, state = c.n_heads // c.n_kv_heads, {"embedding.word_embeddings.weight": model.embed.weight}
    for i, layer in enumerate(model.layers):
        p = f"decoder.layers.{i}."
        q = layer.attn.wq.weight.view(c.n_kv_heads, G * D, -1)
        k = layer.attn.wk.weight.view(c.n_kv_heads, D, -1)
        v = layer.attn.wv.weight.view(c.n_kv_heads, D, -1)
        state[p + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, c.d_model)
        state[p + "self_attention.linear_qkv.layer_norm_weight"] = layer.attn_norm.weight
        state[p + "self_attention.linear_proj.weight"] = layer.attn.wo.weight
        state[p + "self_attention.linear_proj._extra_state"] = torch.zeros(0)
        state[p + "mlp.linear_fc1.weight"] = torch.cat([layer.mlp.w_gate.weight, layer.mlp.w_up.weight])
        state[p + "mlp.linear_fc1.layer_norm_weight"] = layer.mlp_norm.weight
        state[p + "mlp.linear_fc2.weight"] = layer.mlp.w_down.weight
    state["decoder.final_layernorm.weight"] = model.norm.weight
    state["output_layer.weight"] = model.lm_head.weight
    return {k: v.detach().clone() for k, v in state.items()}


def megatron_args(config, **extra):
    import argparse

    return argparse.Namespace(
        num_layers=config.n_layers,
        hidden_size=config.d_model,
        num_attention_heads=config.n_heads,
        group_query_attention=True,
        num_query_groups=config.n_kv_heads,
        ffn_hidden_size=config.d_ff,
        padded_vocab_size=config.vocab_size,
        max_position_embeddings=config.max_seq_len,
        norm_epsilon=config.norm_eps,
        swiglu=True,
        normalization="RMSNorm",
        untie_embeddings_and_output_weights=True,
        dmc_window_size=12,
        dmc_init_val=5.0,
        dmc_cr=8.0,
        **extra,
    )


def test_megatron_checkpoint_import(tmp_path):
    model = merging_dmc(12)
    rank0 = tmp_path / "release" / "mp_rank_00"
    rank0.mkdir(parents=True)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release")
    torch.save(
        {"model": megatron_state(model), "args": megatron_args(model.config), "iteration": 0},
        rank0 / "model_optim_rng.pt",
    )
    loaded = zoo.from_pretrained(tmp_path)
    assert loaded.config.family == "dmc" and loaded.config.dmc_target_cr == 8.0
    ids = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))
    info = CliRunner().invoke(main, ["info", str(tmp_path), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["config"] == loaded.config.to_dict()


def test_megatron_checkpoint_with_other_objects_is_refused(tmp_path):
    model = zoo.build("dmc-tiny")
    (tmp_path / "mp_rank_00").mkdir()
    args = megatron_args(model.config, init_method=torch.nn.init.normal_)  # a function: not weights-only
    torch.save({"model": {}, "args": args}, tmp_path / "mp_rank_00" / "model_optim_rng.pt")
    with pytest.raises(zoo.CheckpointError, match="holds Python objects other than tensors; it is refused for safety"):
        zoo.from_pretrained(tmp_path)


def test_megatron_checkpoint_without_decoder_layers_is_refused(tmp_path):
    model = zoo.build("dmc-tiny")
    (tmp_path / "mp_rank_00").mkdir()
    tensors = {"embedding.word_embeddings.weight": model.embed.weight.detach()}  # a file with no layers
    torch.save({"model": tensors, "args": megatron_args(model.config)}, tmp_path / "mp_rank_00" / "model_optim_rng.pt")
    with pytest.raises(zoo.CheckpointError, match="model_optim_rng.pt: no Megatron-Core decoder layers"):
        zoo.from_pretrained(tmp_path)


class Prefill(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, lengths, state):
        return self.model.prefill(input_ids, lengths, state)[0]


class DecodeStep(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, positions, state):
        return self.model.decode_step(tokens, positions, state)[0]


def test_prefill_and_decode_export_with_one_dmc_op_per_layer():
    """torch.export of prefill (dynamic batch and length) and of decode_step (dynamic batch and cache
    length) holds one zoo.dmc_prefill_cache / zoo.dmc_decode_attention node per layer and equals eager at
    other batch sizes and lengths, with real merging."""
    from torch.export import Dim

    model = informative_weights(zoo.build("dmc-tiny")).eval()
    c = model.config
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.layers:  # decision channels that merge about half the time
            rows = torch.arange(c.n_kv_heads) * c.head_dim + c.head_dim - 1
            layer.attn.wk.weight[rows] = torch.randn(c.n_kv_heads, c.d_model, generator=g) * 2.5 + 0.1
    batch, length, cache = Dim("batch", max=64), Dim("length", max=256), Dim("cache", max=256)

    def state_dims(state, slots):
        return {name: {0: batch, 2: slots} if name[:-1] in ("k", "v") else {0: batch} for name in state}

    with torch.no_grad():
        state = model.init_state(2, 9)
        prefill = torch.export.export(
            Prefill(model),
            (torch.randint(0, 256, (2, 9)), torch.tensor([9, 4]), state),
            dynamic_shapes=({0: batch, 1: length}, {0: batch}, state_dims(state, length)),
        )
        state = model.init_state(2, 9)
        decode = torch.export.export(
            DecodeStep(model),
            (torch.tensor([1, 2]), torch.tensor([5, 3]), state),
            dynamic_shapes=({0: batch}, {0: batch}, state_dims(state, cache)),
        )
    for program, op in ((prefill, "zoo.dmc_prefill_cache"), (decode, "zoo.dmc_decode_attention")):
        targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
        assert sum(op in target for target in targets) == c.n_layers, targets
    prefill, decode = prefill.module(), decode.module()
    merged = []
    for B, L in ((1, 1), (3, 5), (3, 37), (1, 37)):
        ids = torch.randint(0, 256, (B, L), generator=g)
        lengths = torch.tensor([L, max(1, L - 3), max(1, L // 2)][:B])
        with torch.no_grad():
            expected_state, captured_state = model.init_state(B, L), model.init_state(B, L)
            expected, _ = model.prefill(ids, lengths, expected_state)
            torch.testing.assert_close(prefill(ids, lengths, captured_state), expected, atol=1e-5, rtol=0)
            for name, tensor in expected_state.items():
                torch.testing.assert_close(captured_state[name], tensor, atol=1e-5, rtol=0, msg=name)
            for name in expected_state:  # room to decode, as the engine's resize does
                if name[:-1] in ("k", "v"):
                    for s in (expected_state, captured_state):
                        s[name] = torch.cat([s[name], s[name].new_zeros(B, c.n_kv_heads, 4, c.head_dim)], dim=2)
            for t in range(4):
                tokens, positions = ids[:, -1] * 0 + t, lengths + t
                expected, _ = model.decode_step(tokens, positions, expected_state)
                torch.testing.assert_close(decode(tokens, positions, captured_state), expected, atol=1e-5, rtol=0)
            for name, tensor in expected_state.items():
                torch.testing.assert_close(captured_state[name], tensor, atol=1e-5, rtol=0, msg=name)
        merged.append(1 - expected_state["slots0"].sum().item() / ((lengths + 4).sum().item() * c.n_kv_heads))
    assert 0.2 < max(merged) < 0.8  # decisions were mixed
