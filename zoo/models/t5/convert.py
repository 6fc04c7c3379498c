"""HF T5ForConditionalGeneration (T5 v1.1, nanoT5) <-> zoo t5: config mapping and parameter renaming.

Imported: gated FFNs ("gated-gelu" is gelu_new, the tanh approximation) with an untied lm_head. Refused
with an error: the original T5's non-gated FFN ("relu") and its tied lm_head over a decoder output
scaled by d_model^-0.5. transformers v4 says "tied and scaled" with tie_word_embeddings (default true);
v5 writes scale_decoder_outputs and always tie_word_embeddings=true, and leaves lm_head.weight out of the
checkpoint when it equals shared.weight, which is then the lm_head's copy (unscaled).
"""

from zoo.checkpoint import activation_from_hf, rename_keys
from zoo.errors import CheckpointError
from zoo.models.t5.config import T5Config

FORMAT = "HF T5ForConditionalGeneration (model_type t5, gated FFN, untied lm_head: T5 v1.1 / nanoT5)"

_ATTENTION = {"q": "wq", "k": "wk", "v": "wv", "o": "wo"}
_FFN = {"wi_0": "w_gate", "wi_1": "w_up", "wo": "w_down"}


def _sublayer_rules(stack: str, index: int, hf_module: str, ours: str, norm: str, names: dict) -> list:
    """Rules of HF's `{stack}.block.N.layer.{index}` (a norm and one module) -> `{stack}.layers.N.*`."""
    hf = rf"{stack}\.block\.(\d+)\.layer\.{index}\."
    rules = [
        (hf + rf"{hf_module}\.{name}\.weight", rf"{stack}.layers.\1.{ours}.{our_name}.weight")
        for name, our_name in names.items()
    ]
    return [*rules, (hf + r"layer_norm\.weight", rf"{stack}.layers.\1.{norm}.weight")]


RULES = [
    (r"shared\.weight", "embed.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"(encoder|decoder)\.final_layer_norm\.weight", r"\1.norm.weight"),
    (
        r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
        r"\1.relative_bias.weight",
    ),
    *_sublayer_rules("encoder", 0, "SelfAttention", "attn", "attn_norm", _ATTENTION),
    *_sublayer_rules("encoder", 1, "DenseReluDense", "mlp", "mlp_norm", _FFN),
    *_sublayer_rules("decoder", 0, "SelfAttention", "attn", "attn_norm", _ATTENTION),
    *_sublayer_rules("decoder", 1, "EncDecAttention", "cross_attn", "cross_norm", _ATTENTION),
    *_sublayer_rules("decoder", 2, "DenseReluDense", "mlp", "mlp_norm", _FFN),
]
# copies of shared.weight that older checkpoints saved, and a table HF itself ignores on load
IGNORED = (
    r"(encoder|decoder)\.embed_tokens\.weight",
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",
)


def accepts(raw: dict) -> bool:
    return raw.get("model_type") == "t5"


def scales_decoder_output(hf: dict) -> bool:
    """Whether the checkpoint is the original T5's tied lm_head over d_model^-0.5 * decoder output."""
    if "scale_decoder_outputs" in hf:  # transformers v5
        return bool(hf["scale_decoder_outputs"])
    return bool(hf.get("tie_word_embeddings", True))  # v4: tied implies scaled


def activation_of(feed_forward_proj: str) -> str:
    gated, _, act = feed_forward_proj.partition("-")
    if gated != "gated" or not act:
        raise ValueError(
            f"feed_forward_proj {feed_forward_proj!r} is not supported: the t5 family is T5 v1.1 with a gated FFN "
            "(e.g. 'gated-gelu')"
        )
    return "gelu_tanh" if act == "gelu" else activation_from_hf(act)  # HF maps gated-gelu to gelu_new


def config_from_hf(hf: dict) -> T5Config:
    activation = activation_of(hf.get("feed_forward_proj", "relu"))
    if scales_decoder_output(hf):
        raise ValueError(
            "tied lm_head with the decoder output scaled by d_model^-0.5 (the original T5) is not supported; the "
            "t5 family is T5 v1.1 (untied lm_head, tie_word_embeddings=false)"
        )
    n_layers = hf["num_layers"]
    return T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_layers=n_layers,
        n_decoder_layers=hf.get("num_decoder_layers") or n_layers,
        n_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        d_ff=hf["d_ff"],
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        activation=activation,
        decoder_start_token_id=start_token_of(hf),
    )


def start_token_of(hf: dict) -> int:
    """The decoder start token: decoder_start_token_id (v4 configs), else the pad id (v5 writes only that)."""
    for key in ("decoder_start_token_id", "pad_token_id"):
        if hf.get(key) is not None:
            return hf[key]
    return 0


def hf_config_from(config: T5Config) -> dict:
    """The HF T5Config kwargs of the same model. transformers v5 ties lm_head to shared even so (it unties on
    loading a checkpoint whose lm_head differs): a twin built from these kwargs needs its own lm_head."""
    hf_act = {"gelu_tanh": "gelu", "silu": "silu", "relu": "relu"}  # HF's gated-gelu is the tanh GELU
    return dict(
        model_type="t5",
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        num_layers=config.n_layers,
        num_decoder_layers=config.n_decoder_layers,
        num_heads=config.n_heads,
        d_kv=config.head_dim,
        d_ff=config.d_ff,
        relative_attention_num_buckets=config.relative_buckets,
        relative_attention_max_distance=config.relative_max_distance,
        layer_norm_epsilon=config.norm_eps,
        feed_forward_proj=f"gated-{hf_act[config.activation]}",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=config.decoder_start_token_id,
    )


def state_dict_from_hf(tensors: dict, config: T5Config):
    """Returns (zoo state dict, keys that no rule maps). A checkpoint without lm_head.weight (transformers
    v5 leaves out a copy of shared.weight) gets shared.weight as its lm_head."""
    if "lm_head.weight" not in tensors and "shared.weight" in tensors:
        tensors = {**tensors, "lm_head.weight": tensors["shared.weight"]}
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors = {**tensors, "shared.weight": tensors["encoder.embed_tokens.weight"]}
    renamed, unexpected = rename_keys(tensors, RULES, IGNORED)
    if not renamed:
        raise CheckpointError(f"no tensor of the {FORMAT} layout found (saw: {', '.join(sorted(tensors)[:5])})")
    return renamed, unexpected
