"""The TensorRT plugin of zoo::rope: the AOT Triton kernel, one program per row of x padded to 4-D
(zoo.ops.tensorrt_plugin). TensorRT's tensors are contiguous, so the strides are those of each input's
shape, with stride 0 on a cos / sin axis that broadcasts: one that is a static 1 where x's is not."""

from zoo.ops.rope.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, PluginError, product, static

MAX_DIMS = 4


def _kernel():
    from zoo.ops.rope.triton_kernel import rope_kernel

    return rope_kernel


def _strides(shape, broadcast_to):
    """Strides of the first 3 axes of a contiguous tensor of `shape`, 0 where it broadcasts."""
    return [0 if size == 1 and target != 1 else product(shape[i + 1 :]) for i, (size, target) in
            enumerate(zip(shape[:3], broadcast_to[:3]))]  # fmt: skip


def _launch(inputs, attrs, config):
    x = inputs[0]
    if len(x.shape) > MAX_DIMS:
        raise PluginError(f"rope: the AOT kernel takes x of at most {MAX_DIMS} dims, got {len(x.shape)}")
    x4 = (1,) * (MAX_DIMS - len(x.shape)) + tuple(x.shape)
    scalars = {"size1": x4[1], "size2": x4[2]}
    for spec in inputs:
        padded = (1,) * (MAX_DIMS - len(spec.shape)) + tuple(spec.shape)
        for axis, stride in enumerate(_strides(padded, x4)):
            scalars[f"{spec.name}_s{axis}"] = stride
    half = static(x.shape[-1], "rope's head size") // 2
    scalars["half"] = half
    return Launch(grid=(product(x4[:3]),), scalars=scalars, constexprs={"BLOCK_H": 1 << (half - 1).bit_length()})


def _configs(inputs, attrs):
    return [{"num_warps": 4}, {"num_warps": 2}, {"num_warps": 1}]


PLUGINS = [OpPlugin("rope", output_specs, AotKernel(_kernel, _launch, _configs))]
