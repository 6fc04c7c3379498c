"""The TensorRT plugin of zoo::rms_norm: the AOT Triton kernel, one program per row (zoo.ops.tensorrt_plugin)."""

from zoo.ops.rms_norm.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, product, static


def _kernel():
    from zoo.ops.rms_norm.triton_kernel import rms_norm_kernel

    return rms_norm_kernel


def _launch(inputs, attrs, config):
    x = inputs[0]
    D = static(x.shape[-1], "rms_norm's D")
    return Launch(grid=(product(x.shape[:-1]),), scalars={"D": D, "eps": attrs["eps"]},
                  constexprs={"BLOCK_D": 1 << (D - 1).bit_length()})  # fmt: skip


def _configs(inputs, attrs):
    return [{"num_warps": 4}, {"num_warps": 8}, {"num_warps": 2}]


PLUGINS = [OpPlugin("rms_norm", output_specs, AotKernel(_kernel, _launch, _configs))]
