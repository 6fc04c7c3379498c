"""Tiny models of every family, captured once per test session (capture takes seconds per graph)."""

import pytest
import torch

import zoo
from passes.capture import capture
from tests.conftest import informative_weights

TINY = ["llama-tiny", "gpt-tiny", "dmc-tiny", "mamba2-tiny", "mamba2-hybrid-tiny", "moe-tiny"]
# the zoo node each family's regions become, and how many of them per captured step
REGION_NODES = {
    "dmc-tiny": {"prefill": {"dmc_prefill_cache": 2}, "decode": {"dmc_decode_attention": 2}},
    "mamba2-tiny": {
        "prefill": {"causal_conv1d": 2, "ssd_chunk_scan": 2},
        "decode": {"causal_conv1d_update": 2, "ssd_state_update": 2},
    },
    "mamba2-hybrid-tiny": {
        "prefill": {"causal_conv1d": 2, "ssd_chunk_scan": 2},
        "decode": {"causal_conv1d_update": 2, "ssd_state_update": 2},
    },
    "moe-tiny": {"prefill": {"moe_experts": 2}, "decode": {"moe_experts": 2}},
}
# lengths 1, chunk - 1, chunk + 1, 3 chunks + 5 of the Mamba-2 tiny models (chunk 16)
LENGTHS = (1, 15, 17, 3 * 16 + 5)


def tiny_model(name: str):
    model = informative_weights(zoo.build(name), seed=1)
    if name == "dmc-tiny":  # decisions that merge about half the tokens: the compressed cache is ragged
        with torch.no_grad():
            for layer in model.layers:
                layer.attn.wk.weight[layer.attn.head_dim - 1 :: layer.attn.head_dim] *= 40
    return model.eval()


@pytest.fixture(scope="session", params=TINY)
def family(request):
    """(name, model, {"prefill": Captured, "decode": Captured}); tests must not change the programs."""
    model = tiny_model(request.param)
    return request.param, model, {phase: capture(model, phase) for phase in ("prefill", "decode")}


def prompts_batch(vocab: int, batch: int, length: int, seed: int):
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    lengths = torch.tensor([length - (row * 7) % length for row in range(batch)])  # ragged, the first full
    return ids, lengths
