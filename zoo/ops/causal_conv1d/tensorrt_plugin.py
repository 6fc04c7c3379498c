"""The TensorRT plugins of zoo::causal_conv1d (the AOT prefill kernel, one program per (row, block of
positions, block of channels), which also writes the window) and zoo::causal_conv1d_update (the AOT
decode kernel, one program per (row, block of channels)); their channel block is the tactic
(zoo.ops.tensorrt_plugin). A plugin has no optional input: a conv without bias passes a
zero bias, which adds exactly 0."""

from zoo.ops.causal_conv1d.shapes import output_specs, update_output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, cdiv, static


def _prefill_kernel():
    from zoo.ops.causal_conv1d.triton_kernel import causal_conv1d_kernel

    return causal_conv1d_kernel


def _prefill_launch(inputs, attrs, config):
    b, L, dim = inputs[0].shape
    K = static(inputs[1].shape[1], "causal_conv1d's kernel width")
    constexprs = {"K": K, "HAS_BIAS": True, "BLOCK_K": 1 << (K - 1).bit_length()}
    grid = (b, cdiv(L, config["BLOCK_L"]), cdiv(dim, config["BLOCK_D"]))
    return Launch(grid=grid, scalars={"L": L, "DIM": dim}, constexprs=constexprs)


def _prefill_configs(inputs, attrs):
    from zoo.ops.causal_conv1d.triton_kernel import BLOCK_D, BLOCK_L

    return [
        {"BLOCK_L": BLOCK_L, "BLOCK_D": BLOCK_D, "num_warps": 4},
        {"BLOCK_L": 32, "BLOCK_D": 64, "num_warps": 4},
        {"BLOCK_L": 16, "BLOCK_D": 128, "num_warps": 8},
    ]


def _kernel():
    from zoo.ops.causal_conv1d.triton_kernel import causal_conv1d_update_kernel

    return causal_conv1d_update_kernel


def _launch(inputs, attrs, config):
    b, dim, K = inputs[0].shape
    K = static(K, "causal_conv1d_update's kernel width")
    constexprs = {"K": K, "HAS_BIAS": True, "BLOCK_K": 1 << (K - 1).bit_length()}
    return Launch(grid=(b, cdiv(dim, config["BLOCK_D"])), scalars={"DIM": dim}, constexprs=constexprs)


def _configs(inputs, attrs):
    return [{"BLOCK_D": 64, "num_warps": 4}, {"BLOCK_D": 128, "num_warps": 4}, {"BLOCK_D": 32, "num_warps": 2}]


PLUGINS = [
    OpPlugin("causal_conv1d", output_specs, AotKernel(_prefill_kernel, _prefill_launch, _prefill_configs)),
    OpPlugin("causal_conv1d_update", update_output_specs, AotKernel(_kernel, _launch, _configs)),
]
