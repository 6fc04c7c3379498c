"""NVIDIA's released DMC checkpoints (nvidia/Llama-2-*-DMC-*): Megatron-Core files, their DMC config, and the
names and QKV layout shared with every Megatron-Core GPT model. zoo/parallel/megatron.py reads all
tensor-parallel ranks, merges or re-shards them and converts the names (the registry's converter).

Layout: DIR/[release|iter_N/]mp_rank_00 .. mp_rank_{p-1}/model_optim_rng.pt, each a torch pickle of
{"model": state dict, "args": argparse.Namespace, ...}. It is read with torch.load(weights_only=True), which
builds tensors and plain containers only; argparse.Namespace is the one class allowed besides (the args it
holds are plain values). Megatron-Core names (docs/algorithms.md §1.5):
- decoder.layers.N.self_attention.linear_qkv.weight: interleaved per query group as
  [q heads of the group (G x D rows) | k (D) | v (D)];
- ...linear_qkv.layer_norm_weight / mlp.linear_fc1.layer_norm_weight: the pre-attention / pre-MLP RMSNorm
  (TE fuses the norms into the linears; non-TE checkpoints name them input_layernorm / pre_mlp_layernorm);
- mlp.linear_fc1.weight: [gate | up] (SwiGLU applies SiLU to the first half), mlp.linear_fc2.weight;
- embedding.word_embeddings.weight, decoder.final_layernorm.weight, output_layer.weight.
"""

import argparse
from pathlib import Path

import torch

from zoo.checkpoint import load_weights_only
from zoo.errors import CheckpointError
from zoo.models.dmc.config import DMCConfig

CHECKPOINT_FILE = "model_optim_rng.pt"

_LAYER = r"decoder\.layers\.(\d+)\."
RULES = [
    (r"embedding\.word_embeddings\.weight", "embed.weight"),
    (r"decoder\.final_layernorm\.weight", "norm.weight"),
    (r"output_layer\.weight", "lm_head.weight"),
    (_LAYER + r"self_attention\.linear_qkv\.weight", r"layers.\1.attn.linear_qkv"),
    (
        _LAYER + r"(?:self_attention\.linear_qkv\.layer_norm_weight|input_layernorm\.weight)",
        r"layers.\1.attn_norm.weight",
    ),
    (_LAYER + r"self_attention\.linear_proj\.weight", r"layers.\1.attn.wo.weight"),
    (_LAYER + r"(?:mlp\.linear_fc1\.layer_norm_weight|pre_mlp_layernorm\.weight)", r"layers.\1.mlp_norm.weight"),
    (_LAYER + r"mlp\.linear_fc1\.weight", r"layers.\1.mlp.linear_fc1"),
    (_LAYER + r"mlp\.linear_fc2\.weight", r"layers.\1.mlp.w_down.weight"),
]
IGNORED = (r".*\._extra_state", r".*\.core_attention\..*")  # TransformerEngine bookkeeping


def checkpoint_file(path) -> Path | None:
    """The rank-0 file of a Megatron checkpoint directory, or None when `path` is not one."""
    path = Path(path)
    candidates = [path / "mp_rank_00" / CHECKPOINT_FILE, path / "release" / "mp_rank_00" / CHECKPOINT_FILE]
    tracker = path / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        iteration = tracker.read_text().strip()
        name = "release" if iteration == "release" else f"iter_{int(iteration):07d}"
        candidates.insert(0, path / name / "mp_rank_00" / CHECKPOINT_FILE)
    return next((c for c in candidates if c.is_file()), None)


def read(file: Path) -> dict:
    """The checkpoint's dict ("model", "args", ...), its tensors memory-mapped (read from disk when used)."""
    checkpoint = load_weights_only(file, safe_globals=(argparse.Namespace,), mmap=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "args" not in checkpoint:
        raise CheckpointError(f"{file}: expected a Megatron checkpoint with 'model' and 'args'")
    return checkpoint


def decoder_fields(args: argparse.Namespace) -> dict:
    """The config fields every Megatron GPT-style decoder shares, from its training args."""
    a = vars(args)
    heads = a["num_attention_heads"]
    return dict(
        vocab_size=a.get("padded_vocab_size") or a["vocab_size"],
        d_model=a["hidden_size"],
        n_layers=a["num_layers"],
        n_heads=heads,
        n_kv_heads=a["num_query_groups"] if a.get("group_query_attention") else heads,
        d_ff=a["ffn_hidden_size"],
        max_seq_len=a.get("max_position_embeddings") or a.get("seq_length", 4096),
        norm_eps=a.get("norm_epsilon", 1e-5),
        tie_embeddings=not a.get("untie_embeddings_and_output_weights", False),
    )


def config_from_args(args: argparse.Namespace) -> DMCConfig:
    a = vars(args)
    if not a.get("swiglu", False) or a.get("normalization", "RMSNorm") != "RMSNorm":
        raise CheckpointError("only Llama-style Megatron models (--swiglu, RMSNorm) are imported")
    return DMCConfig(
        **decoder_fields(args),
        rope_theta=float(a.get("rotary_base", 10000)),
        dmc_window=a.get("dmc_window_size", 12),
        dmc_init_val=float(a.get("dmc_init_val", 5.0)),
        dmc_target_cr=float(a.get("dmc_cr", 1.0)),
    )


def split_qkv(weight: torch.Tensor, config: DMCConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's per-group interleaving [q x G | k | v] -> separate q, k, v weights."""
    D, groups, G = config.head_dim, config.n_kv_heads, config.n_heads // config.n_kv_heads
    if weight.shape[0] != groups * (G + 2) * D:
        raise CheckpointError(f"linear_qkv has {weight.shape[0]} rows, expected {groups * (G + 2) * D}")
    per_group = weight.view(groups, (G + 2) * D, -1)
    q, k, v = per_group.split([G * D, D, D], dim=1)
    return q.reshape(-1, weight.shape[1]), k.reshape(-1, weight.shape[1]), v.reshape(-1, weight.shape[1])
