"""The TensorRT plugin of zoo::moe_experts: JIT (trtp.impl), since its CUDA path is routing and a block
schedule in torch ops, two grouped-GEMM kernels and a sum (zoo.ops.tensorrt_plugin)."""

from zoo.ops.moe_experts.shapes import output_specs
from zoo.ops.tensorrt_plugin import OpPlugin

PLUGINS = [
    OpPlugin("moe_experts", output_specs, jit_reason="routing and its schedule as torch ops, two kernels, a sum")
]
