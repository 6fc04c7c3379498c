"""The TensorRT plugins of the grouped MoE ops, all AOT (zoo.ops.tensorrt_plugin): zoo::moe_schedule (one
program, its passes' block sizes fixed), zoo::moe_grouped_gate_up and zoo::moe_grouped_down (zoo::moe_experts'
grouped kernels: a program per (schedule block, block of columns); BLOCK_M is the schedule's, the column
and reduction blocks are the tactic). The tensors are contiguous, so the kernels' strides are sizes."""

from zoo.ops.moe_experts.triton_kernel import ACTIVATION_CODES
from zoo.ops.moe_grouped.reference import BLOCK_M
from zoo.ops.moe_grouped.shapes import down_output_specs, gate_up_output_specs, schedule_output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, cdiv, static


def _schedule_kernel():
    from zoo.ops.moe_grouped.triton_kernel import moe_schedule_kernel

    return moe_schedule_kernel


def _schedule_launch(inputs, attrs, config):
    from zoo.ops.moe_grouped.reference import schedule_blocks
    from zoo.ops.moe_grouped.triton_kernel import routing_blocks

    tokens, n_experts = inputs[0].shape
    top_k = int(attrs["top_k"])
    constexprs = {"TOP_K": top_k, "SOFTMAX_FIRST": attrs["routing"] == "softmax-topk", "BLOCK_M": BLOCK_M}
    constexprs |= routing_blocks(static(n_experts, "the number of experts"), top_k)
    scalars = {"n_tokens": tokens, "n_experts": n_experts, "n_blocks": schedule_blocks(tokens * top_k, n_experts)}
    return Launch(grid=(1,), scalars=scalars, constexprs=constexprs)


def _schedule_configs(inputs, attrs):
    from zoo.ops.moe_grouped.triton_kernel import BLOCK_S, BLOCK_T

    return [
        {"BLOCK_T": BLOCK_T, "BLOCK_S": BLOCK_S, "num_warps": 8},
        {"BLOCK_T": 16, "BLOCK_S": 256, "num_warps": 8},
        {"BLOCK_T": BLOCK_T, "BLOCK_S": BLOCK_S, "num_warps": 4},
    ]


def _dot_constexprs(dtype) -> dict:
    """zoo.ops.moe_experts.triton_kernel.dot_options on a GPU: fp32 tiles in full fp32, others as they are."""
    import torch

    fp32 = dtype == torch.float32
    return {"UPCAST": fp32, "DOT_PRECISION": "ieee" if fp32 else "tf32", "BLOCK_M": BLOCK_M}


def _gate_up_kernel():
    from zoo.ops.moe_experts.triton_kernel import moe_gate_up_kernel

    return moe_gate_up_kernel


def _gate_up_launch(inputs, attrs, config):
    x, w_gate_up, _, block_experts = inputs
    tokens, d_model = x.shape
    rows = w_gate_up.shape[1]
    d_expert = rows // 2 if attrs["gated"] else rows
    top_k = int(attrs["top_k"])
    constexprs = {"TOP_K": top_k, "GATED": bool(attrs["gated"]), "ACTIVATION": ACTIVATION_CODES[attrs["activation"]]}
    scalars = {"n_slots": tokens * top_k, "d_model": d_model, "d_expert": d_expert, "stride_x": d_model,
               "stride_we": rows * d_model, "stride_wf": d_model, "stride_h": d_expert}  # fmt: skip
    grid = (block_experts.shape[0], cdiv(d_expert, config["BLOCK_F"]))
    return Launch(grid=grid, scalars=scalars, constexprs={**constexprs, **_dot_constexprs(x.dtype)})


def _gate_up_configs(inputs, attrs):
    from zoo.ops.moe_experts.triton_kernel import BLOCK_D, BLOCK_F

    return [
        {"BLOCK_F": BLOCK_F, "BLOCK_D": BLOCK_D, "num_warps": 4},
        {"BLOCK_F": 128, "BLOCK_D": 32, "num_warps": 8},
        {"BLOCK_F": 64, "BLOCK_D": 64, "num_warps": 4},
    ]


def _down_kernel():
    from zoo.ops.moe_experts.triton_kernel import moe_down_kernel

    return moe_down_kernel


def _down_launch(inputs, attrs, config):
    h, w_down, _, block_experts, slot_weights = inputs
    _, d_model, d_expert = w_down.shape
    scalars = {"n_slots": slot_weights.shape[0], "d_model": d_model, "d_expert": d_expert, "stride_h": d_expert,
               "stride_we": d_model * d_expert, "stride_wd": d_expert, "stride_out": d_model}  # fmt: skip
    grid = (block_experts.shape[0], cdiv(d_model, config["BLOCK_N"]))
    return Launch(grid=grid, scalars=scalars, constexprs=_dot_constexprs(h.dtype))


def _down_configs(inputs, attrs):
    from zoo.ops.moe_experts.triton_kernel import BLOCK_D, BLOCK_F

    return [
        {"BLOCK_N": BLOCK_F, "BLOCK_F": BLOCK_D, "num_warps": 4},
        {"BLOCK_N": 128, "BLOCK_F": 32, "num_warps": 8},
        {"BLOCK_N": 64, "BLOCK_F": 64, "num_warps": 4},
    ]


PLUGINS = [
    OpPlugin("moe_schedule", schedule_output_specs, AotKernel(_schedule_kernel, _schedule_launch, _schedule_configs)),
    OpPlugin(
        "moe_grouped_gate_up", gate_up_output_specs, AotKernel(_gate_up_kernel, _gate_up_launch, _gate_up_configs)
    ),
    OpPlugin("moe_grouped_down", down_output_specs, AotKernel(_down_kernel, _down_launch, _down_configs)),
]
