"""Tensor parallelism of degree 2 on gloo against the unsharded model, for every family's tiny model:
greedy tokens equal, logits within fp32 tolerance (prefill, with and without sequence parallelism, and
teacher-forced decode steps), for a batch of prompts of different lengths; state per rank holds its heads."""

import re

import pytest
import torch

from tests.parallel.spawn import run_on_two_ranks

FAMILY_MODELS = [
    "llama-tiny",
    "gpt-tiny",
    "dmc-tiny",
    "moe-tiny",
    "mamba2-tiny",
    "mamba2-hybrid-tiny",
    "t5-tiny",
    "hourglass-tiny",
    "dynpool-tiny",
    "revilm-tiny",
]
# state entries that are residual-stream vectors or masks: every rank holds them whole (docs/parallel.md)
REPLICATED_STATE = {
    *("window", "shortened", "segments", "open_sum", "open_count", "latest", "encoder_mask", "retrieved_mask")
}
PROMPTS = [[5, 17, 99, 3, 42], [7, 1, 250, 33, 8, 64, 120, 9], [200, 13, 6]]  # longest 8: even, so SP runs
ODD_PROMPTS = [[5, 17, 99, 3, 42], [7, 1, 250]]  # longest 5: prefill without SP
NEW_TOKENS = 6


def media_request(model, batch: int) -> dict:
    """Re-ViLM's images and retrieved captions (one image per prompt; prompts alternate 2 and 1 captions)."""
    if not getattr(model, "takes_media", False):
        return {}
    size = model.config.vision.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(4))
    return {"images": images, "retrieved": [[[5 + row, 9, 12, 40], [7, 8]][: 2 - row % 2] for row in range(batch)]}


def informative_model(name: str):
    from tests.conftest import informative_weights
    from zoo.registry import build

    return informative_weights(build(name), seed=1)


def teacher_forced_logits(model, prompts, tokens: list[list[int]], media: dict):
    """Prefill logits and the logits of every decode step feeding `tokens`, stacked (steps, B, V)."""
    from zoo.models.revilm.model import pack_captions

    B, longest = len(prompts), max(map(len, prompts))
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(B, longest, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt)
    state = model.init_state(B, longest + NEW_TOKENS)
    if media:
        state = model.encode_media(media["images"], *pack_captions(media["retrieved"], model.config), state)
    logits, state = model.prefill(ids, lengths, state)
    steps = [logits]
    positions = torch.ones_like(lengths) if getattr(model, "encoder_decoder", False) else lengths
    for step in range(NEW_TOKENS - 1):
        logits, state = model.decode_step(torch.tensor([t[step] for t in tokens]), positions + step, state)
        steps.append(logits)
    return torch.stack(steps), state


def assert_state_sharded(name: str, sharded: dict, full: dict, world: int) -> None:
    for key, tensor in full.items():
        local = sharded[key].shape
        if key.rstrip("0123456789") in REPLICATED_STATE:
            assert local == tensor.shape, key
            continue
        differing = [axis for axis, (a, b) in enumerate(zip(local, tensor.shape)) if a != b]
        assert len(differing) == 1 and local[differing[0]] * world == tensor.shape[differing[0]], (name, key, local)


def check_families(rank: int) -> None:
    import torch.distributed as dist

    from runtime import Engine
    from zoo.parallel import TensorParallelGroup, tensor_parallel

    tp = TensorParallelGroup()
    for name in FAMILY_MODELS:
        full = informative_model(name)
        sharded = tensor_parallel(informative_model(name), tp)
        for prompts in (PROMPTS, ODD_PROMPTS):
            media = media_request(full, len(prompts))
            expected = Engine(full, "torch").generate(prompts, NEW_TOKENS, **media)
            assert Engine(sharded, "torch").generate(prompts, NEW_TOKENS, **media) == expected, name
            with torch.inference_mode():
                want, full_state = teacher_forced_logits(full, prompts, expected, media)
                got, state = teacher_forced_logits(sharded, prompts, expected, media)
            assert want.abs().max() > 1.0, name  # informative logits
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)
        assert_state_sharded(name, state, full_state, tp.size)
        if name == "llama-tiny":
            heads = full.config.n_kv_heads
            assert state["k0"].shape == (len(ODD_PROMPTS), heads // 2, 5 + NEW_TOKENS, full.config.head_dim)
        if name == "revilm-tiny":
            block = full.media_xattn["0"]
            assert state["media_k0"].shape[1] == block.n_heads // 2 and state["retrieved_v1"].shape[1] == 2
        if name == "mamba2-tiny":
            mixer = full.layers[0].mixer
            assert state["ssm0"].shape[1] == mixer.n_heads // 2 and state["conv0"].shape[1] == mixer.conv_dim // 2
    # sampling: the same seed on every rank gives the same tokens, equal to the unsharded model's
    sampling = dict(temperature=1.0, top_k=50, seed=3, **media_request(full, len(PROMPTS)))
    sampled = Engine(sharded, "torch").generate(PROMPTS, NEW_TOKENS, **sampling)
    assert sampled == Engine(full, "torch").generate(PROMPTS, NEW_TOKENS, **sampling)
    everyone = [None, None]
    dist.all_gather_object(everyone, sampled)
    assert everyone[0] == everyone[1]
    check_errors(tp)


# (model name, config changes, the one-line error at TP 2)
INDIVISIBLE = [
    ("llama-tiny", dict(n_heads=3, n_kv_heads=3, head_dim=16), "attention heads=3 is not divisible"),
    ("llama-tiny", dict(n_heads=4, n_kv_heads=1), "KV heads (query groups)=1 is not divisible"),
    ("mamba2-tiny", dict(mamba_heads=3, n_groups=1), "Mamba-2 heads (nheads)=3 is not divisible"),
    ("mamba2-tiny", dict(n_groups=1), "Mamba-2 groups (ngroups)=1 is not divisible"),
    ("moe-tiny", dict(d_expert=33), "MoE expert hidden size (d_expert)=33 is not divisible"),
    ("t5-tiny", dict(n_heads=3), "attention heads=3 is not divisible"),
    ("dynpool-tiny", dict(n_heads=1, head_dim=64), "attention heads=1 is not divisible"),
]


def check_errors(tp) -> None:
    import dataclasses

    from runtime.distributed import check_degree
    from zoo.errors import ZooError
    from zoo.parallel import ShardingError, tensor_parallel
    from zoo.registry import build_from_config, get_config

    for name, changes, message in INDIVISIBLE:
        config = get_config(name)
        config = type(config).from_dict(dataclasses.asdict(config) | changes)
        with pytest.raises(ShardingError, match=re.escape(message)) as error:
            tensor_parallel(build_from_config(config), tp)
        assert "\n" not in str(error.value) and str(error.value).endswith("tensor-parallel degree 2")
    with pytest.raises(ZooError, match=re.escape("--tp 4 exceeds the world size 2")):
        check_degree(4)
    assert check_degree(2) == 2


def test_every_family_at_tp2_matches_tp1():
    run_on_two_ranks(check_families)
