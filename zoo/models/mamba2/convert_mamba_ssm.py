"""state-spaces mamba_ssm checkpoints (config.json with ssm_cfg + pytorch_model.bin) -> zoo mamba2.

The .bin file is a pickle; zoo.checkpoint.load_weights_only reads it with torch.load(weights_only=True),
which refuses anything but tensors and plain containers.
"""

import math
from pathlib import Path

import torch

from zoo.checkpoint import convert_with_rules, load_weights_only
from zoo.errors import CheckpointError
from zoo.models.mamba2.config import Mamba2Config
from zoo.models.mamba2.convert_hf import TRUNK_RULES, dt_limit_from

FORMAT = "mamba_ssm (config.json with ssm_cfg, pytorch_model.bin)"
WEIGHTS_FILE = "pytorch_model.bin"

RULES = [(r"backbone\.embedding\.weight", "embed.weight"), *TRUNK_RULES]

# Mamba2 module options whose other values change the math this family implements
REQUIRED_SSM_OPTIONS = {"rmsnorm": True, "norm_before_gate": False, "D_has_hdim": False}


def accepts(raw: dict) -> bool:
    return "ssm_cfg" in raw and "d_model" in raw and "model_type" not in raw


def config_from_hf(raw: dict) -> Mamba2Config:
    ssm = raw.get("ssm_cfg") or {}
    if ssm.get("layer", "Mamba1") != "Mamba2":
        raise ValueError(f"ssm_cfg layer {ssm.get('layer', 'Mamba1')!r}: only Mamba2 checkpoints are imported")
    if raw.get("attn_layer_idx"):
        raise ValueError("mamba_ssm hybrids (attn_layer_idx) are not imported; use the NemotronH format")
    if raw.get("d_intermediate", 0):
        raise ValueError("d_intermediate > 0 (an MLP after each mixer) is not supported")
    for option, value in REQUIRED_SSM_OPTIONS.items():
        if ssm.get(option, value) != value:
            raise ValueError(f"ssm_cfg {option}={ssm[option]!r} is not supported (only {value!r})")
    multiple = raw.get("pad_vocab_size_multiple", 8)
    d_model, expand, head_dim = raw["d_model"], ssm.get("expand", 2), ssm.get("headdim", 64)
    return Mamba2Config(
        vocab_size=math.ceil(raw["vocab_size"] / multiple) * multiple,
        d_model=d_model,
        n_layers=raw["n_layer"],
        d_state=ssm.get("d_state", 128),
        d_conv=ssm.get("d_conv", 4),
        expand=expand,
        mamba_head_dim=head_dim,
        n_groups=ssm.get("ngroups", 1),
        chunk_size=ssm.get("chunk_size", 256),
        dt_limit=dt_limit_from(ssm.get("dt_limit")),
        proj_bias=bool(ssm.get("bias", False)),
        conv_bias=bool(ssm.get("conv_bias", True)),
        norm_eps=raw.get("norm_epsilon", 1e-5),
        tie_embeddings=bool(raw.get("tie_embeddings", True)),
        residual_in_fp32=bool(raw.get("residual_in_fp32", True)),
    )


def load_tensors(path) -> dict[str, torch.Tensor]:
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE} (the mamba_ssm layout)")
    tensors = load_weights_only(weights)
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{weights} holds a {type(tensors).__name__}, not a dict of tensors")
    return tensors


def state_dict_from_hf(tensors: dict, config: Mamba2Config):
    return convert_with_rules(tensors, RULES, config.tie_embeddings, FORMAT)
