"""HF NemotronHForCausalLM <-> zoo mamba2-hybrid (pattern M / * / -; MoE layers `E` are refused)."""

from zoo.checkpoint import activation_from_hf, convert_with_rules
from zoo.models.mamba2.config import HybridConfig
from zoo.models.mamba2.convert_hf import require_silu, shared_fields_from_hf, shared_fields_to_hf

FORMAT = "HF NemotronHForCausalLM (model_type nemotron_h)"

BLOCK_SYMBOLS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-", "moe": "E"}

# transformers v5 saves the trunk as "backbone." (its module tree and older checkpoints say "model.")
_TRUNK = r"(?:model|backbone)\."
_LAYER = _TRUNK + r"layers\.(\d+)\."
RULES = [
    (_TRUNK + r"embeddings\.weight", "embed.weight"),
    (_TRUNK + r"norm_f\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (_LAYER + r"norm\.weight", r"layers.\1.norm.weight"),
    (_LAYER + r"mixer\.(in_proj|out_proj|conv1d|norm)\.(weight|bias)", r"layers.\1.mixer.\2.\3"),
    (_LAYER + r"mixer\.(dt_bias|A_log|D)", r"layers.\1.mixer.\2"),
    (_LAYER + r"mixer\.(q|k|v|o)_proj\.(weight|bias)", r"layers.\1.mixer.w\2.\3"),
    (_LAYER + r"mixer\.(up|down)_proj\.(weight|bias)", r"layers.\1.mixer.w_\2.\3"),
]


def accepts(raw: dict) -> bool:
    return raw.get("model_type") == "nemotron_h"


def pattern_from(hf: dict) -> str:
    if hf.get("hybrid_override_pattern"):
        pattern = hf["hybrid_override_pattern"]
    else:
        pattern = "".join(BLOCK_SYMBOLS[kind] for kind in hf["layers_block_type"])
    if "E" in pattern:
        raise ValueError("MoE layers ('E') in the pattern are not supported by the mamba2-hybrid family")
    return pattern


def config_from_hf(hf: dict) -> HybridConfig:
    require_silu(hf.get("mamba_hidden_act", "silu"))
    pattern = pattern_from(hf)
    n_heads = hf["num_attention_heads"]
    return HybridConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=len(pattern),
        pattern=pattern,
        d_state=hf.get("ssm_state_size", 128),
        mamba_head_dim=hf["mamba_head_dim"],
        mamba_heads=hf["mamba_num_heads"],
        residual_in_fp32=bool(hf.get("residual_in_fp32", False)),
        **shared_fields_from_hf(hf),
        max_seq_len=hf.get("max_position_embeddings", 4096),
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf.get("intermediate_size", 0),
        mlp_activation=activation_from_hf(hf.get("mlp_hidden_act", "relu2")),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def hf_config_from(config: HybridConfig) -> dict:
    hf_act = {"relu2": "relu2", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu", "relu": "relu"}
    return dict(
        model_type="nemotron_h",
        hybrid_override_pattern=config.pattern,
        ssm_state_size=config.d_state,
        mamba_head_dim=config.mamba_head_dim,
        mamba_num_heads=config.mamba_heads,
        **shared_fields_to_hf(config),
        max_position_embeddings=config.max_seq_len,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        intermediate_size=config.d_ff,
        mlp_hidden_act=hf_act[config.mlp_activation],
        attention_bias=config.attention_bias,
        mlp_bias=config.mlp_bias,
        mamba_hidden_act="silu",
    )


def state_dict_from_hf(tensors: dict, config: HybridConfig):
    return convert_with_rules(tensors, RULES, config.tie_embeddings, FORMAT)
