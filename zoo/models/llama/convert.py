"""HF LlamaForCausalLM <-> zoo llama: config mapping and parameter renaming."""

from zoo.checkpoint import activation_from_hf, convert_with_rules
from zoo.models.llama.config import LlamaConfig

FORMAT = "HF LlamaForCausalLM (model_type llama)"


def accepts(raw: dict) -> bool:
    return raw.get("model_type") == "llama"


_LAYER = r"model\.layers\.(\d+)\."
# everything but the MLP: shared with the MoE family (zoo/models/moe/convert.py)
TRUNK_RULES = [
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (_LAYER + r"self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"layers.\1.attn.w\2.\3"),
    (_LAYER + r"input_layernorm\.weight", r"layers.\1.attn_norm.weight"),
    (_LAYER + r"post_attention_layernorm\.weight", r"layers.\1.mlp_norm.weight"),
]
RULES = [*TRUNK_RULES, (_LAYER + r"mlp\.(gate|up|down)_proj\.(weight|bias)", r"layers.\1.mlp.w_\2.\3")]
IGNORED = (_LAYER + r"self_attn\.rotary_emb\.inv_freq",)  # a buffer that old checkpoints saved


def rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(theta, scaling) from transformers v5 `rope_parameters` or v4 `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    if not params:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if "type" in params and "rope_type" not in params:  # v4 spelling
        params["rope_type"] = params.pop("type")
    theta = float(params.pop("rope_theta", 10000.0))
    if params.get("rope_type", "default") == "default":
        return theta, None
    return theta, params


def config_from_hf(hf: dict) -> LlamaConfig:
    theta, scaling = rope_from_hf(hf)
    n_heads = hf["num_attention_heads"]
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=activation_from_hf(hf.get("hidden_act", "silu")),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def hf_config_from(config: LlamaConfig) -> dict:
    """The HF LlamaConfig kwargs of the same model (used to build the HF twin in tests and benchmarks)."""
    rope = {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta}
    hf_act = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "relu2": "relu2"}
    return dict(
        model_type="llama",
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        intermediate_size=config.d_ff,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        hidden_act=hf_act[config.activation],
        rope_parameters=rope,
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=config.attention_bias,
        mlp_bias=config.mlp_bias,
    )


def state_dict_from_hf(hf_state: dict, config: LlamaConfig):
    """Returns (zoo state dict, keys that no rule maps)."""
    return convert_with_rules(hf_state, RULES, config.tie_embeddings, FORMAT, IGNORED)
