"""HF CLIP vision weights -> the zoo's VisionTransformer (zoo/nn/vit.py), the frozen image encoder of Re-ViLM.

Reads a safetensors directory of CLIPVisionModel, CLIPVisionModelWithProjection or CLIPModel (whose text
tower and logit scale are left out). The projection to the CLIP embedding space (`visual_projection`) is
the retriever's embedding; a CLIPVisionModel has none, and its embedding is then the pooled output.
"""

import os

import torch

from zoo import checkpoint
from zoo.errors import CheckpointError
from zoo.nn.vit import VIT_ACTIVATIONS, VisionTransformer, ViTConfig

FORMAT = "HF CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel (model_type clip_vision_model or clip)"
PROJECTION = "visual_projection.weight"

_VISION = r"(?:vision_model\.)?"  # transformers 5 saves a CLIPVisionModel without the prefix
_LAYER = _VISION + r"encoder\.layers\.(\d+)\."
RULES = [
    (_VISION + r"embeddings\.class_embedding", "class_embedding"),
    (_VISION + r"embeddings\.patch_embedding\.weight", "patch_embedding.weight"),
    (_VISION + r"embeddings\.position_embedding\.weight", "position_embedding"),
    (_VISION + r"(pre_layrnorm|post_layernorm)\.(weight|bias)", r"\1.\2"),
    (_LAYER + r"self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"layers.\1.self_attn.\2_proj.\3"),
    (_LAYER + r"(layer_norm1|layer_norm2)\.(weight|bias)", r"layers.\1.\2.\3"),
    (_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"layers.\1.\2.\3"),
    (r"visual_projection\.weight", "projection.weight"),
]
# the text tower of a CLIPModel and buffers some checkpoints saved
IGNORED = (r"text_model\..*", r"text_projection\.weight", r"logit_scale", r".*position_ids")


def accepts(raw: dict) -> bool:
    return raw.get("model_type") in ("clip", "clip_vision_model")


def vit_config_from_hf(raw: dict, has_projection: bool) -> ViTConfig:
    vision = raw["vision_config"] if raw.get("model_type") == "clip" else raw
    projection = raw.get("projection_dim", vision.get("projection_dim", 512))
    activation = vision.get("hidden_act", "quick_gelu")
    if activation not in VIT_ACTIVATIONS:
        raise CheckpointError(f"unsupported CLIP activation {activation!r}; supported: {', '.join(VIT_ACTIVATIONS)}")
    return ViTConfig(
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 32),
        d_model=vision.get("hidden_size", 768),
        n_layers=vision.get("num_hidden_layers", 12),
        n_heads=vision.get("num_attention_heads", 12),
        d_ff=vision.get("intermediate_size", 3072),
        projection_dim=projection if has_projection else None,
        activation=activation,
        norm_eps=vision.get("layer_norm_eps", 1e-5),
        channels=vision.get("num_channels", 3),
    )


def vit_state_dict_from_hf(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    return checkpoint.convert_with_rules(tensors, RULES, tied=False, format_name=FORMAT, ignore=IGNORED)


def load_clip_vision(path: str | os.PathLike) -> VisionTransformer:
    """The CLIP vision tower of an HF checkpoint directory (eval mode, the checkpoint's dtype)."""
    raw = checkpoint.read_config_json(path)
    if not accepts(raw):
        raise CheckpointError(
            f"{path}: model_type {raw.get('model_type')!r} is not a CLIP checkpoint; expected {FORMAT}"
        )
    tensors = checkpoint.load_safetensors_dir(path)
    try:
        config = vit_config_from_hf(raw, has_projection=PROJECTION in tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the CLIP vision config: {exc}") from exc
    state_dict, unexpected = vit_state_dict_from_hf(tensors)
    with torch.device("meta"):
        model = VisionTransformer(config)
    model = model.to_empty(device="cpu").to(next(iter(state_dict.values())).dtype)
    checkpoint.load_state_dict_strict(model, state_dict, str(path), unexpected)
    return model.eval()


def load_vision_tower(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Put the CLIP checkpoint at `path` in place of a RevilmLM's vision tower (same shapes required)."""
    vision = load_clip_vision(path)
    if vision.config != model.config.vision:
        raise CheckpointError(
            f"{path}: CLIP vision config {vision.config} does not match the model's {model.config.vision}"
        )
    param = next(model.vision.parameters())
    model.vision.load_state_dict(vision.to(dtype=param.dtype).state_dict())
    return model


# HF IDEFICS's Flamingo blocks (the parity oracle of zoo/nn/flamingo.py): IdeficsPerceiverResampler's names
# are the zoo's; IdeficsGatedCrossAttentionLayer's attention and SwiGLU projections are renamed.
RESAMPLER_RULES = [(r"(latents|layer_norm\.(weight|bias)|blocks\.\d+\.[01]\.\w+\.(weight|bias))", r"\1")]
XATTN_RULES = [
    (r"cross_attn\.(q|k|v|o)_proj\.weight", r"\1_proj.weight"),
    (r"mlp\.(gate|up|down)_proj\.weight", r"mlp.w_\1.weight"),
    (r"(input_layernorm|post_attention_layernorm)\.weight", r"\1.weight"),
    (r"(alpha_cross_attn|alpha_dense)", r"\1"),
]


def _renamed_all(tensors: dict[str, torch.Tensor], rules, format_name: str) -> dict[str, torch.Tensor]:
    renamed, unexpected = checkpoint.convert_with_rules(tensors, rules, tied=False, format_name=format_name)
    if unexpected:
        raise CheckpointError(f"{format_name}: tensors with no zoo counterpart: {', '.join(sorted(unexpected))}")
    return renamed


def resampler_state_dict_from_idefics(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An IdeficsPerceiverResampler's state dict as zoo.nn.flamingo.PerceiverResampler's."""
    return _renamed_all(tensors, RESAMPLER_RULES, "IdeficsPerceiverResampler")


def xattn_state_dict_from_idefics(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An IdeficsGatedCrossAttentionLayer's state dict (alpha_type "float") as GatedCrossAttentionBlock's."""
    for name in ("alpha_cross_attn", "alpha_dense"):
        if name in tensors and tensors[name].numel() != 1:
            raise CheckpointError(
                f"{name} has shape {tuple(tensors[name].shape)}: only alpha_type 'float' (one gate) maps"
            )
    return _renamed_all(tensors, XATTN_RULES, "IdeficsGatedCrossAttentionLayer")
