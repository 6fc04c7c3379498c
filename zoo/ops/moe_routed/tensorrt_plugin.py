"""The TensorRT plugins of zoo::moe_routed_gate_up (the AOT kernel, one program per (routed slot, block of
hidden units)) and zoo::moe_routed_down (one program per (token, block of output channels)); routing,
gating and the activation are constexprs, the sizes extra args, the hidden / output block the tactic
(zoo.ops.tensorrt_plugin)."""

from zoo.ops.moe_experts.triton_kernel import ACTIVATION_CODES
from zoo.ops.moe_routed.shapes import down_output_specs, gate_up_output_specs
from zoo.ops.tensorrt_plugin import AotKernel, Launch, OpPlugin, cdiv, static


def _gate_up_kernel():
    from zoo.ops.moe_routed.triton_kernel import moe_routed_gate_up_kernel

    return moe_routed_gate_up_kernel


def _down_kernel():
    from zoo.ops.moe_routed.triton_kernel import moe_routed_down_kernel

    return moe_routed_down_kernel


def _routing_constexprs(n_experts, attrs) -> dict:
    from zoo.ops.moe_routed.triton_kernel import routing_blocks

    top_k = int(attrs["top_k"])
    blocks = routing_blocks(static(n_experts, "the number of experts"), top_k)
    return {"TOP_K": top_k, "SOFTMAX_FIRST": attrs["routing"] == "softmax-topk", **blocks}


def _gate_up_launch(inputs, attrs, config):
    T, d_model = inputs[0].shape
    n_experts, rows, _ = inputs[2].shape
    d_expert = rows // 2 if attrs["gated"] else rows
    constexprs = {**_routing_constexprs(n_experts, attrs), "GATED": bool(attrs["gated"])}
    constexprs["ACTIVATION"] = ACTIVATION_CODES[attrs["activation"]]
    grid = (T * int(attrs["top_k"]), cdiv(d_expert, config["BLOCK_F"]))
    return Launch(grid=grid, scalars={"n_experts": n_experts, "d_model": d_model, "d_expert": d_expert},
                  constexprs=constexprs)  # fmt: skip


def _gate_up_configs(inputs, attrs):
    from zoo.ops.moe_routed.triton_kernel import BLOCK_D, BLOCK_F

    return [
        {"BLOCK_F": BLOCK_F, "BLOCK_D": BLOCK_D, "num_warps": 4},
        {"BLOCK_F": 32, "BLOCK_D": 128, "num_warps": 4},
        {"BLOCK_F": 128, "BLOCK_D": 64, "num_warps": 8},
    ]


def _down_launch(inputs, attrs, config):
    T = inputs[0].shape[0]
    n_experts, d_model, d_expert = inputs[2].shape
    grid = (T, cdiv(d_model, config["BLOCK_N"]))
    return Launch(grid=grid, scalars={"n_experts": n_experts, "d_model": d_model, "d_expert": d_expert},
                  constexprs=_routing_constexprs(n_experts, attrs))  # fmt: skip


def _down_configs(inputs, attrs):
    from zoo.ops.moe_routed.triton_kernel import BLOCK_F, BLOCK_N

    return [
        {"BLOCK_N": BLOCK_N, "BLOCK_F": BLOCK_F, "num_warps": 4},
        {"BLOCK_N": 32, "BLOCK_F": 128, "num_warps": 4},
        {"BLOCK_N": 128, "BLOCK_F": 64, "num_warps": 8},
    ]


PLUGINS = [
    OpPlugin("moe_routed_gate_up", gate_up_output_specs, AotKernel(_gate_up_kernel, _gate_up_launch, _gate_up_configs)),
    OpPlugin("moe_routed_down", down_output_specs, AotKernel(_down_kernel, _down_launch, _down_configs)),
]
