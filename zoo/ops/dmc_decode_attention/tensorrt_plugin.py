"""The TensorRT plugin of zoo::dmc_decode_attention: the AOT Triton kernel, one program per (row, KV
head), init_val, scale and the query dtype's eps baked in; the cache length T and merge_period are extra
args, the head sizes and window constexprs (zoo.ops.tensorrt_plugin)."""

import torch

from zoo.ops.dmc_decode_attention.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, static


def _kernel():
    from zoo.ops.dmc_decode_attention.triton_kernel import dmc_decode_attention_kernel

    return dmc_decode_attention_kernel


def _sizes(inputs, attrs):
    q, k_cache = inputs[0], inputs[6]
    H, D = static(q.shape[1], "DMC's query heads"), static(q.shape[2], "DMC's head size")
    Hkv = static(k_cache.shape[1], "DMC's KV heads")
    return {"HKV": Hkv, "G": H // Hkv, "D": D, "W": attrs["window"]}


def _launch(inputs, attrs, config):
    q, k_cache = inputs[0], inputs[6]
    scalars = {"T": k_cache.shape[2], "init_val": float(attrs["init_val"]), "scale": float(attrs["scale"])}
    scalars |= {"eps": float(torch.finfo(q.dtype).eps), "merge_period": attrs["merge_period"]}
    return Launch(grid=(q.shape[0] * k_cache.shape[1],), scalars=scalars, constexprs=_sizes(inputs, attrs))


def _configs(inputs, attrs):
    from zoo.ops.dmc_decode_attention.triton_kernel import block_sizes

    sizes = _sizes(inputs, attrs)
    default = block_sizes(sizes["G"], sizes["D"], sizes["W"])
    wider = {**default, "BLOCK_T": 2 * default["BLOCK_T"]}
    return [{**default, "num_warps": 4}, {**wider, "num_warps": 8}, {**default, "num_warps": 2}]


PLUGINS = [OpPlugin("dmc_decode_attention", output_specs, AotKernel(_kernel, _launch, _configs))]
