"""The TensorRT plugin of zoo::gated_rms_norm: the AOT Triton kernel, one program per (row, group)
(zoo.ops.tensorrt_plugin)."""

from zoo.ops.gated_rms_norm.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, product


def _kernel():
    from zoo.ops.gated_rms_norm.triton_kernel import gated_rms_norm_kernel

    return gated_rms_norm_kernel


def _launch(inputs, attrs, config):
    x, group_size = inputs[0], attrs["group_size"]
    D = x.shape[-1]
    scalars = {"D": D, "group_size": group_size, "eps": attrs["eps"]}
    return Launch(grid=(product(x.shape[:-1]), D // group_size), scalars=scalars,
                  constexprs={"BLOCK_G": 1 << (group_size - 1).bit_length()})  # fmt: skip


def _configs(inputs, attrs):
    return [{"num_warps": 4}, {"num_warps": 8}, {"num_warps": 2}]


PLUGINS = [OpPlugin("gated_rms_norm", output_specs, AotKernel(_kernel, _launch, _configs))]
