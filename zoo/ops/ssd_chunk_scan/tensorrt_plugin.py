"""The TensorRT plugin of zoo::ssd_chunk_scan: the AOT Triton kernel, one program per (row, head, block of
head_dim rows) walking the sequence; the positions per block are the tactic, as they change only rounding
(zoo.ops.tensorrt_plugin)."""

from zoo.ops.ssd_chunk_scan.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, cdiv, static


def _kernel():
    from zoo.ops.ssd_chunk_scan.triton_kernel import ssd_chunk_scan_kernel

    return ssd_chunk_scan_kernel


def _launch(inputs, attrs, config):
    x, B = inputs[0], inputs[3]
    b, L, h, p = x.shape
    scalars = {"L": L, "H": h, "G": B.shape[2], "P": p, "N": B.shape[3]}
    return Launch(grid=(b, h, cdiv(p, config["BLOCK_P"])), scalars=scalars)


def _configs(inputs, attrs):
    from zoo.ops.ssd_chunk_scan.triton_kernel import block_sizes

    p, n = inputs[0].shape[3], inputs[3].shape[3]
    default = block_sizes(attrs["chunk_size"], static(p, "ssd_chunk_scan's head_dim"), static(n, "its d_state"))
    return [{**default, "num_warps": 4}, {**default, "BLOCK_Q": 32, "num_warps": 4}, {**default, "num_warps": 8}]


PLUGINS = [OpPlugin("ssd_chunk_scan", output_specs, AotKernel(_kernel, _launch, _configs))]
