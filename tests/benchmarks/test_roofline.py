import pytest
import torch

from benchmarks.roofline import decode_step_cost, streamed_params
from zoo.models.gpt import GPTConfig
from zoo.models.llama import LlamaConfig


def test_roofline_counts_streamed_weights_and_cache():
    untied = LlamaConfig(vocab_size=100, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=32)
    assert streamed_params(untied) == untied.num_params() - 100 * 16  # the input embedding is indexed
    gpt = GPTConfig(vocab_size=100, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=64)
    assert streamed_params(gpt) == gpt.num_params() - 64 * 16  # tied embedding is read as the head
    cost = decode_step_cost(untied, batch=3, context=10, dtype=torch.float16)
    kv_per_token = 2 * 2 * 1 * 8 * 2  # K and V, layers, KV heads, head dim, bytes
    assert cost.bytes_read == streamed_params(untied) * 2 + 3 * 10 * kv_per_token
    assert cost.flops == 3 * (2 * streamed_params(untied) + 4 * 10 * 2 * 8 * 2)
    assert cost.lower_bound_s(1e9, 1e30) == pytest.approx(cost.bytes_read / 1e9)
    assert cost.lower_bound_s(1e30, 1e6) == pytest.approx(cost.flops / 1e6)
