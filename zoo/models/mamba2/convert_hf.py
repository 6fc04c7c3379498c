"""HF Mamba2ForCausalLM <-> zoo mamba2. Mixer parameter names are the same on both sides."""

import math

from zoo.checkpoint import convert_with_rules
from zoo.models.mamba2.config import Mamba2Config

FORMAT = "HF Mamba2ForCausalLM (model_type mamba2)"

# everything but the embedding, which mamba_ssm checkpoints name differently (convert_mamba_ssm.py)
TRUNK_RULES = [
    (r"backbone\.norm_f\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"backbone\.layers\.(\d+)\.norm\.weight", r"layers.\1.norm.weight"),
    (r"backbone\.layers\.(\d+)\.mixer\.(in_proj|out_proj|conv1d|norm)\.(weight|bias)", r"layers.\1.mixer.\2.\3"),
    (r"backbone\.layers\.(\d+)\.mixer\.(dt_bias|A_log|D)", r"layers.\1.mixer.\2"),
]
RULES = [(r"backbone\.embeddings\.weight", "embed.weight"), *TRUNK_RULES]


def accepts(raw: dict) -> bool:
    return raw.get("model_type") == "mamba2"


def json_float(value) -> float:
    """transformers v5 writes non-finite floats into config.json as {"__float__": "Infinity"}."""
    return float(value["__float__"]) if isinstance(value, dict) else float(value)


def dt_limit_from(limit) -> tuple[float, float] | None:
    """None for the no-op limit (0, inf), else the (min, max) clamp of dt."""
    if limit is None:
        return None
    low, high = json_float(limit[0]), json_float(limit[1])
    return None if (low, high) == (0.0, math.inf) else (low, high)


def shared_fields_from_hf(hf: dict) -> dict:
    """Mamba-2 settings that HF's Mamba2 and NemotronH configs name alike."""
    return dict(
        d_conv=hf.get("conv_kernel", 4),
        expand=hf.get("expand", 2),
        n_groups=hf.get("n_groups", 1),
        chunk_size=hf.get("chunk_size", 256),
        dt_limit=dt_limit_from(hf.get("time_step_limit")),
        proj_bias=bool(hf.get("use_bias", False)),
        conv_bias=bool(hf.get("use_conv_bias", True)),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def shared_fields_to_hf(config: Mamba2Config) -> dict:
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        conv_kernel=config.d_conv,
        expand=config.expand,
        n_groups=config.n_groups,
        chunk_size=config.chunk_size,
        time_step_limit=list(config.dt_limit or (0.0, math.inf)),
        use_bias=config.proj_bias,
        use_conv_bias=config.conv_bias,
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        residual_in_fp32=config.residual_in_fp32,
    )


def require_silu(act: str) -> None:
    if act != "silu":
        raise ValueError(f"Mamba-2 mixer activation {act!r} is not supported (only silu)")


def config_from_hf(hf: dict) -> Mamba2Config:
    require_silu(hf.get("hidden_act", "silu"))
    d, heads, head_dim = hf["hidden_size"], hf["num_heads"], hf["head_dim"]
    if heads * head_dim != hf.get("expand", 2) * d:
        raise ValueError(f"num_heads * head_dim = {heads * head_dim} differs from expand * hidden_size")
    return Mamba2Config(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        d_state=hf.get("state_size", 128),
        mamba_head_dim=head_dim,
        mamba_heads=heads,
        residual_in_fp32=bool(hf.get("residual_in_fp32", True)),
        **shared_fields_from_hf(hf),
    )


def hf_config_from(config: Mamba2Config) -> dict:
    return dict(
        model_type="mamba2",
        num_hidden_layers=config.n_layers,
        num_heads=config.mamba_heads,
        head_dim=config.mamba_head_dim,
        state_size=config.d_state,
        hidden_act="silu",
        **shared_fields_to_hf(config),
    )


def state_dict_from_hf(tensors: dict, config: Mamba2Config):
    return convert_with_rules(tensors, RULES, config.tie_embeddings, FORMAT)
