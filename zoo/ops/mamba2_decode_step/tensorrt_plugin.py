"""The TensorRT plugin of zoo::mamba2_decode_step: JIT (trtp.impl). Its kernel is one launch, but with a
low-precision output it keeps the gate in an fp32 scratch buffer between its two loops, and an AOT plugin
has no buffer besides its inputs and outputs (zoo.ops.tensorrt_plugin)."""

from zoo.ops.mamba2_decode_step.shapes import output_specs
from zoo.ops.tensorrt_plugin import OpPlugin

PLUGINS = [
    OpPlugin("mamba2_decode_step", output_specs, jit_reason="an fp32 scratch buffer for the gate between two loops")
]
