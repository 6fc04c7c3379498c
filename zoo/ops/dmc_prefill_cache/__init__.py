from zoo.ops.dmc_prefill_cache.op import OUTPUTS, dmc_prefill_cache
from zoo.ops.dmc_prefill_cache.reference import dmc_prefill_cache_ref

__all__ = ["OUTPUTS", "dmc_prefill_cache", "dmc_prefill_cache_ref"]
