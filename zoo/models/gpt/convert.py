"""HF GPT2LMHeadModel <-> zoo gpt. HF stores GPT-2 linears as Conv1D, (in, out), and fuses q, k, v."""

import re

import torch

from zoo.checkpoint import activation_from_hf, convert_with_rules
from zoo.errors import CheckpointError
from zoo.models.gpt.config import GPTConfig

FORMAT = "HF GPT2LMHeadModel (model_type gpt2)"


def accepts(raw: dict) -> bool:
    return raw.get("model_type") == "gpt2"


_LAYER = r"(?:transformer\.)?h\.(\d+)\."
RULES = [
    (r"(?:transformer\.)?wte\.weight", "embed.weight"),
    (r"(?:transformer\.)?wpe\.weight", "pos_embed.weight"),
    (r"(?:transformer\.)?ln_f\.(weight|bias)", r"norm.\1"),
    (r"lm_head\.weight", "lm_head.weight"),
    (_LAYER + r"ln_1\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (_LAYER + r"ln_2\.(weight|bias)", r"layers.\1.mlp_norm.\2"),
    (_LAYER + r"attn\.c_attn\.(weight|bias)", r"layers.\1.attn.wqkv.\2"),
    (_LAYER + r"attn\.c_proj\.(weight|bias)", r"layers.\1.attn.wo.\2"),
    (_LAYER + r"mlp\.c_fc\.(weight|bias)", r"layers.\1.mlp.w_up.\2"),
    (_LAYER + r"mlp\.c_proj\.(weight|bias)", r"layers.\1.mlp.w_down.\2"),
]
IGNORED = (_LAYER + r"attn\.(bias|masked_bias)",)  # causal-mask buffers that old checkpoints saved

UNSUPPORTED = {
    "scale_attn_by_inverse_layer_idx": True,
    "scale_attn_weights": False,
    "add_cross_attention": True,
}


def config_from_hf(hf: dict) -> GPTConfig:
    for option, bad_value in UNSUPPORTED.items():
        if hf.get(option, not bad_value) == bad_value:
            raise CheckpointError(f"GPT-2 option {option}={bad_value} is not supported")
    d = hf["n_embd"]
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,
        max_seq_len=hf.get("n_positions", 1024),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=activation_from_hf(hf.get("activation_function", "gelu_new")),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def hf_config_from(config: GPTConfig) -> dict:
    if config.n_kv_heads != config.n_heads or config.head_dim * config.n_heads != config.d_model:
        raise ValueError("GPT-2 has neither grouped KV heads nor a free head_dim")
    hf_act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
    return dict(
        model_type="gpt2",
        vocab_size=config.vocab_size,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=config.d_ff,
        n_positions=config.max_seq_len,
        layer_norm_epsilon=config.norm_eps,
        activation_function=hf_act[config.activation],
        tie_word_embeddings=config.tie_embeddings,
    )


def state_dict_from_hf(hf_state: dict, config: GPTConfig):
    """Returns (zoo state dict, keys that no rule maps). Conv1D weights are transposed, c_attn split in 3."""
    renamed, unexpected = convert_with_rules(hf_state, RULES, config.tie_embeddings, FORMAT, IGNORED)
    state = {}
    for key, tensor in renamed.items():
        conv1d_weight = key.endswith(".weight") and re.search(r"\.(wqkv|wo|w_up|w_down)\.", key)
        if conv1d_weight:
            tensor = tensor.T
        if ".wqkv." in key:
            if tensor.shape[0] % 3:
                raise CheckpointError(f"{key}: fused qkv of shape {tuple(tensor.shape)} does not split in 3")
            for name, part in zip("qkv", torch.chunk(tensor, 3, dim=0)):
                state[key.replace(".wqkv.", f".w{name}.")] = part.contiguous()
        else:
            state[key] = tensor.contiguous()
    return state, unexpected
