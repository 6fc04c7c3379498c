"""The TensorRT plugin of zoo::ssd_state_update: the AOT Triton kernel, one program per (row, head, block
of head_dim rows), dt_min / dt_max baked in (zoo.ops.tensorrt_plugin)."""

from zoo.ops.ssd_state_update.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, cdiv, static


def _kernel():
    from zoo.ops.ssd_state_update.triton_kernel import ssd_state_update_kernel

    return ssd_state_update_kernel


def _launch(inputs, attrs, config):
    state, B = inputs[0], inputs[4]
    b, h, p, n = state.shape
    scalars = {"dt_min": float(attrs["dt_min"]), "dt_max": float(attrs["dt_max"]), "H": h, "G": B.shape[1]}
    scalars |= {"P": p, "N": n}
    return Launch(grid=(b, h, cdiv(p, config["BLOCK_P"])), scalars=scalars)


def _configs(inputs, attrs):
    from zoo.ops.ssd_state_update.triton_kernel import block_sizes

    _, _, p, n = inputs[0].shape
    default = block_sizes(static(p, "ssd_state_update's head_dim"), static(n, "ssd_state_update's d_state"))
    return [{**default, "num_warps": 4}, {**default, "BLOCK_P": 16, "num_warps": 4}, {**default, "num_warps": 8}]


PLUGINS = [OpPlugin("ssd_state_update", output_specs, AotKernel(_kernel, _launch, _configs))]
