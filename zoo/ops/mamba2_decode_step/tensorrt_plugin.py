"""The TensorRT plugin of zoo::mamba2_decode_step: the AOT Triton kernel, one program per (row, B/C group),
dt_min / dt_max / eps baked in (zoo.ops.tensorrt_plugin). The kernel keeps the gate y * silu(z) in an fp32
row between its two loops (the group's norm needs the whole group's sum of squares first); the plugin
declares that row as a workspace output after the op's three. A plugin has no optional input: a conv
without bias passes a zero bias, which adds exactly 0."""

import torch

from zoo.ops.mamba2_decode_step.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, static


def _kernel():
    from zoo.ops.mamba2_decode_step.triton_kernel import mamba2_decode_step_kernel

    return mamba2_decode_step_kernel


def _groups(inputs) -> int:
    from zoo.ops.mamba2_decode_step.reference import bc_groups

    _, h, p, n = inputs[1].shape
    conv_dim = inputs[2].shape[1]
    return bc_groups(static(conv_dim, "mamba2_decode_step's conv_dim"), h, p, n)


def _launch(inputs, attrs, config):
    b, h, p, n = inputs[1].shape
    K = static(inputs[5].shape[1], "mamba2_decode_step's d_conv")
    groups = _groups(inputs)
    scalars = {"dt_min": float(attrs["dt_min"]), "dt_max": float(attrs["dt_max"]), "eps": float(attrs["eps"])}
    scalars |= {"H": h, "G": groups, "P": p, "N": n}
    return Launch(grid=(b, groups), scalars=scalars, constexprs={"K": K, "HAS_BIAS": True})


def _configs(inputs, attrs):
    from zoo.ops.mamba2_decode_step.triton_kernel import NUM_WARPS, block_sizes

    _, _, p, n = inputs[1].shape
    K = static(inputs[5].shape[1], "mamba2_decode_step's d_conv")
    default = block_sizes(K, static(p, "mamba2_decode_step's head_dim"), static(n, "mamba2_decode_step's d_state"))
    return [
        {**default, "num_warps": NUM_WARPS},
        {**default, "BLOCK_P": max(1, default["BLOCK_P"] // 2), "num_warps": NUM_WARPS},
        {**default, "num_warps": 4},
    ]


def _gate_workspace(shapes, dtypes, dt_min, dt_max, eps):
    """The fp32 gate row per batch row: the shape of z (b, h*p)."""
    return tuple(shapes[3]), torch.float32


PLUGINS = [
    OpPlugin(
        "mamba2_decode_step",
        output_specs,
        AotKernel(_kernel, _launch, _configs),
        workspace=(("gate_workspace", _gate_workspace),),
    )
]
