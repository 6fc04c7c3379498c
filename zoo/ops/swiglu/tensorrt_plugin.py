"""The TensorRT plugin of zoo::swiglu: the AOT flat elementwise Triton kernel, its block size the tactic
(zoo.ops.tensorrt_plugin). The element count is an int32 extra arg, so a tensor holds below 2^31 elements."""

from zoo.ops.swiglu.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, cdiv, product


def _kernel():
    from zoo.ops.swiglu.triton_kernel import swiglu_kernel

    return swiglu_kernel


def _launch(inputs, attrs, config):
    n = product(inputs[0].shape)
    return Launch(grid=(cdiv(n, config["BLOCK"]),), scalars={"n": n})


def _configs(inputs, attrs):
    return [{"BLOCK": 1024, "num_warps": 4}, {"BLOCK": 2048, "num_warps": 8}, {"BLOCK": 512, "num_warps": 4}]


PLUGINS = [OpPlugin("swiglu", output_specs, AotKernel(_kernel, _launch, _configs))]
