"""The TensorRT plugin of zoo::dmc_prefill_cache: the AOT Triton kernel, one program per (row, KV head),
which writes every output element itself (the slots past the kept ones as zeros). `capacity` is an int
attribute, so the engine is built for one cache capacity; the prompt length L and the capacity T are
extra args, the head count, head size and window constexprs (zoo.ops.tensorrt_plugin)."""

from zoo.ops.dmc_prefill_cache.shapes import output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, static


def _kernel():
    from zoo.ops.dmc_prefill_cache.triton_kernel import dmc_prefill_cache_kernel

    return dmc_prefill_cache_kernel


def _sizes(inputs, attrs):
    k_slot = inputs[5]
    return {"HKV": static(k_slot.shape[1], "DMC's KV heads"), "D": static(k_slot.shape[3], "DMC's head size")}


def _launch(inputs, attrs, config):
    alpha = inputs[0]
    batch, kv_heads, length = alpha.shape
    scalars = {"L": length, "T": attrs["capacity"]}
    constexprs = {**_sizes(inputs, attrs), "W": attrs["window"]}
    return Launch(grid=(batch * kv_heads,), scalars=scalars, constexprs=constexprs)


def _configs(inputs, attrs):
    from zoo.ops.dmc_prefill_cache.triton_kernel import block_sizes

    default = block_sizes(_sizes(inputs, attrs)["D"], attrs["window"])
    shorter = {**default, "BLOCK_L": max(16, default["BLOCK_L"] // 2)}
    return [{**default, "num_warps": 4}, {**shorter, "num_warps": 4}, {**default, "num_warps": 8}]


PLUGINS = [OpPlugin("dmc_prefill_cache", output_specs, AotKernel(_kernel, _launch, _configs))]
