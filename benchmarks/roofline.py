"""Roofline lower bound of one decode step: every weight and every cached key/value read once, every
multiply-add done once, at this machine's measured bandwidth and matmul throughput."""

from dataclasses import dataclass

from zoo.config import DTYPE_BYTES


@dataclass(frozen=True)
class DecodeStepCost:
    bytes_read: float
    flops: float

    def lower_bound_s(self, bandwidth_bytes_per_s: float, flops_per_s: float) -> float:
        return max(self.bytes_read / bandwidth_bytes_per_s, self.flops / flops_per_s)


def decode_step_cost(config, batch: int, context: float, dtype) -> DecodeStepCost:
    """Cost of one step that extends `batch` rows sitting at `context` cached tokens on average.

    bytes: the weights a step streams (streamed_params, each read once whatever the batch) + the decode
    state the rows read (config.state_bytes: KV caches grow with context, recurrent states do not).
    flops: 2 per streamed weight per row + the mixers' own work (config.mixer_flops_per_token).
    """
    params = streamed_params(config)
    flops = batch * (2 * params + config.mixer_flops_per_token(context))
    return DecodeStepCost(
        bytes_read=params * DTYPE_BYTES[dtype] + config.state_bytes(batch, context, dtype), flops=flops
    )


def streamed_params(config) -> int:
    """Parameters a decode step reads in full: all but lookup tables (an untied input embedding and
    learned positions are indexed, one row per token; a tied embedding is read whole as the LM head)."""
    return config.num_params() - config.lookup_params()
