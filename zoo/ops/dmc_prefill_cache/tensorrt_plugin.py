"""The TensorRT plugin of zoo::dmc_prefill_cache: JIT (trtp.impl), since the kernel needs its k and v
outputs zero-filled first, which TensorRT does not do for an AOT kernel (zoo.ops.tensorrt_plugin).
`capacity` is an int attribute: the engine is built for one cache capacity."""

from zoo.ops.dmc_prefill_cache.shapes import output_specs
from zoo.ops.tensorrt_plugin import OpPlugin

PLUGINS = [OpPlugin("dmc_prefill_cache", output_specs, jit_reason="two zero fills of the slots, then the kernel")]
