"""HF MixtralForCausalLM and Qwen2MoeForCausalLM <-> zoo moe. HF checkpoints store one tensor per expert and
projection; the zoo stacks them over experts and fuses each expert's gate and up matrices:
w_gate_up (N, 2F, d) = [gate rows (Mixtral w1, Qwen2-MoE gate_proj); up rows (w3, up_proj)], w_down (N, d, F)."""

import re

import torch

from zoo.checkpoint import convert_with_rules
from zoo.errors import CheckpointError
from zoo.models.llama import convert as llama_convert
from zoo.models.moe.config import MoEConfig

FORMAT = "HF MixtralForCausalLM (model_type mixtral) or Qwen2MoeForCausalLM (model_type qwen2_moe)"
MODEL_TYPES = ("mixtral", "qwen2_moe")

_LAYER = r"model\.layers\.(\d+)\."
# per-expert tensors are renamed to "layers.L.mlp.experts.E.<w_gate|w_up|w_down>", then stacked and fused
RULES = [
    *llama_convert.TRUNK_RULES,  # embeddings, norms, attention
    (_LAYER + r"block_sparse_moe\.gate\.weight", r"layers.\1.mlp.router.weight"),
    (_LAYER + r"block_sparse_moe\.experts\.(\d+)\.w1\.weight", r"layers.\1.mlp.experts.\2.w_gate"),
    (_LAYER + r"block_sparse_moe\.experts\.(\d+)\.w3\.weight", r"layers.\1.mlp.experts.\2.w_up"),
    (_LAYER + r"block_sparse_moe\.experts\.(\d+)\.w2\.weight", r"layers.\1.mlp.experts.\2.w_down"),
    (_LAYER + r"mlp\.gate\.weight", r"layers.\1.mlp.router.weight"),
    (_LAYER + r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", r"layers.\1.mlp.experts.\2.w_\3"),
    (_LAYER + r"mlp\.shared_expert\.(gate|up|down)_proj\.weight", r"layers.\1.mlp.shared.w_\2.weight"),
    (_LAYER + r"mlp\.shared_expert_gate\.weight", r"layers.\1.mlp.shared_gate.weight"),
]
_EXPERT_KEY = re.compile(r"layers\.(\d+)\.mlp\.experts\.(\d+)\.(w_gate|w_up|w_down)")


def accepts(raw: dict) -> bool:
    return raw.get("model_type") in MODEL_TYPES


def config_from_hf(hf: dict) -> MoEConfig:
    base = llama_convert.config_from_hf(hf).to_dict()
    if hf["model_type"] == "mixtral":
        moe = dict(
            n_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            d_expert=hf["intermediate_size"],
            routing="topk-softmax",
        )
    else:
        if hf.get("decoder_sparse_step", 1) != 1 or hf.get("mlp_only_layers"):
            raise ValueError("Qwen2-MoE with dense MLP layers (decoder_sparse_step, mlp_only_layers) is not supported")
        if hf.get("use_sliding_window"):
            raise ValueError("sliding-window attention is not supported")
        moe = dict(
            n_experts=hf["num_experts"],
            top_k=hf["num_experts_per_tok"],
            d_expert=hf["moe_intermediate_size"],
            # softmax over all, top-K, renormalise is top-K-then-softmax
            routing="topk-softmax" if hf.get("norm_topk_prob") else "softmax-topk",
            shared_d_ff=hf.get("shared_expert_intermediate_size", 0),
            shared_gate=True,
        )
        base["qkv_bias"] = bool(hf.get("qkv_bias", True))
    return MoEConfig(**{**base, "mlp": "moe"}, **moe)


def hf_config_from(config: MoEConfig) -> dict:
    if config.expert_mlp != "gated" or config.activation != "silu":
        raise ValueError("HF Mixtral / Qwen2-MoE experts are SwiGLU")
    base = llama_convert.hf_config_from(config)
    common = {
        k: base[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
            "rope_parameters",
            "tie_word_embeddings",
            "head_dim",
        )
    }
    if config.shared_d_ff or config.qkv_bias:
        return dict(
            model_type="qwen2_moe",
            **common,
            num_experts=config.n_experts,
            num_experts_per_tok=config.top_k,
            moe_intermediate_size=config.d_expert,
            shared_expert_intermediate_size=config.shared_d_ff,
            intermediate_size=config.d_ff,
            norm_topk_prob=config.routing == "topk-softmax",
            qkv_bias=config.qkv_bias,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    if config.routing != "topk-softmax":
        raise ValueError("Mixtral routes top-K then softmax")
    return dict(
        model_type="mixtral",
        **common,
        num_local_experts=config.n_experts,
        num_experts_per_tok=config.top_k,
        intermediate_size=config.d_expert,
    )


def state_dict_from_hf(tensors: dict, config: MoEConfig):
    renamed, unexpected = convert_with_rules(tensors, RULES, config.tie_embeddings, FORMAT)
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    state = {}
    for key, tensor in renamed.items():
        match = _EXPERT_KEY.fullmatch(key)
        if match:
            layer, expert, name = int(match[1]), int(match[2]), match[3]
            experts.setdefault((layer, name), {})[expert] = tensor
        else:
            state[key] = tensor
    stacked = {}
    for (layer, name), by_index in experts.items():
        if sorted(by_index) != list(range(config.n_experts)):
            missing = sorted(set(range(config.n_experts)) - set(by_index))
            raise CheckpointError(f"layer {layer} {name}: experts {missing} missing from the checkpoint")
        stacked[layer, name] = torch.stack([by_index[e] for e in range(config.n_experts)])
    for layer in sorted({layer for layer, _ in stacked}):
        prefix = f"layers.{layer}.mlp."
        if (layer, "w_down") in stacked:
            state[prefix + "w_down"] = stacked[layer, "w_down"]
        gate, up = stacked.get((layer, "w_gate")), stacked.get((layer, "w_up"))
        if (gate is None) != (up is None):
            raise CheckpointError(f"layer {layer}: the checkpoint holds the experts' gate or up matrices, not both")
        if gate is not None:
            state[prefix + "w_gate_up"] = torch.cat([gate, up], dim=1)
    return state, unexpected
