from zoo.ops.dmc_decode_attention.op import STATE_OUTPUTS, dmc_decode_attention
from zoo.ops.dmc_decode_attention.reference import dmc_decode_attention_ref

__all__ = ["STATE_OUTPUTS", "dmc_decode_attention", "dmc_decode_attention_ref"]
