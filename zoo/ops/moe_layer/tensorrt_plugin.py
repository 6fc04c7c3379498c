"""The TensorRT plugin of zoo::moe_layer: JIT (trtp.impl), since its CUDA path is the routing kernel, a
block schedule in torch ops, two grouped-GEMM kernels and a sum (zoo.ops.tensorrt_plugin)."""

from zoo.ops.moe_layer.shapes import output_specs
from zoo.ops.tensorrt_plugin import OpPlugin

PLUGINS = [
    OpPlugin("moe_layer", output_specs, jit_reason="the routing kernel, its schedule as torch ops, two kernels, a sum")
]
