"""Roofline lower bound of one decode step: every weight and every cached key/value read once, every
multiply-add done once, at this machine's measured bandwidth and matmul throughput."""

from dataclasses import dataclass

from zoo.nn.transformer import DTYPE_BYTES


@dataclass(frozen=True)
class DecodeStepCost:
    bytes_read: float
    flops: float

    def lower_bound_s(self, bandwidth_bytes_per_s: float, flops_per_s: float) -> float:
        return max(self.bytes_read / bandwidth_bytes_per_s, self.flops / flops_per_s)


def decode_step_cost(config, batch: int, context: float, dtype) -> DecodeStepCost:
    """Cost of one step that extends `batch` rows sitting at `context` cached tokens on average.

    bytes: the weights a step streams (streamed_params, each read once whatever the batch) + the cache
    the rows attend to (batch * context * cache bytes per token). flops: 2 per streamed weight per row +
    attention (q.k and p.v: 4 * context * heads * head_dim per layer per row).
    """
    params = streamed_params(config)
    cache_bytes = batch * context * config.cache_bytes_per_token(dtype)
    attention_flops = 4 * context * config.n_heads * config.head_dim * config.n_layers
    flops = batch * (2 * params + attention_flops)
    return DecodeStepCost(bytes_read=params * DTYPE_BYTES[dtype] + cache_bytes, flops=flops)


def streamed_params(config) -> int:
    """Parameters a decode step reads in full: all but lookup tables (an untied input embedding and
    learned positions are indexed, one row per token; a tied embedding is read whole as the LM head)."""
    lookups = 0 if config.tie_embeddings else config.vocab_size * config.d_model
    if config.position == "learned":
        lookups += config.max_seq_len * config.d_model
    return config.num_params() - lookups
