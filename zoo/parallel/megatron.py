"""Megatron-Core tensor-parallel checkpoints: DIR/[release|iter_N/]mp_rank_00 .. mp_rank_{p-1}/
model_optim_rng.pt (Megatron-LM GPT models, Llama-style --swiglu models, and the DMC branch's), merged into
one state dict, re-sharded to another degree (`zoo reshard`), and loaded by the registry (`zoo.from_pretrained`,
`zoo generate DIR --tp P`). Files are read with torch.load(weights_only=True) (zoo/models/dmc/megatron.py).

How each tensor is split over ranks (Megatron's ColumnParallelLinear / RowParallelLinear /
VocabParallelEmbedding; docs/algorithms.md §8):
- column-parallel, rows concatenated in rank order: linear_qkv (each rank holds its query groups, each
  interleaved [q heads of the group | k | v], so the concatenation is the full interleaved matrix),
  linear_fc1 of a plain MLP, word_embeddings and output_layer (the padded vocabulary), and their biases;
- linear_fc1 of a SwiGLU MLP: each rank holds [its gate rows | its up rows]: the merged matrix is
  [all gate rows | all up rows];
- row-parallel, columns concatenated: linear_proj and linear_fc2 (their biases replicated);
- everything else (norms, position embeddings, biases of row-parallel layers) replicated.
"""

import argparse
import json
import re
from pathlib import Path

import torch

from zoo.checkpoint import rename_keys, write_directory_atomically
from zoo.config import ModelConfig
from zoo.errors import CheckpointError
from zoo.models.dmc import megatron as dmc_megatron
from zoo.models.gpt.config import GPTConfig
from zoo.models.llama.config import LlamaConfig

FORMAT = "Megatron-Core checkpoint (mp_rank_00 .. mp_rank_{p-1}/model_optim_rng.pt), GPT, Llama-style or DMC"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
MARKER_FILE = "zoo_reshard.json"  # marks a directory `reshard` wrote (it may replace only those)
RANK_DIR = re.compile(r"mp_rank_(\d\d)")

COLUMN_PARALLEL = re.compile(
    r"(embedding\.word_embeddings\.weight|output_layer\.weight|.*\.linear_qkv\.(weight|bias)|.*\.linear_fc1\.(weight|bias))"
)
ROW_PARALLEL = re.compile(r".*\.(linear_proj|linear_fc2)\.weight")
VOCAB_PARALLEL = ("embedding.word_embeddings.weight", "output_layer.weight")

_LAYER = r"decoder\.layers\.(\d+)\."
RULES = [
    *dmc_megatron.RULES,
    (r"embedding\.position_embeddings\.weight", "pos_embed.weight"),
    (r"decoder\.final_layernorm\.bias", "norm.bias"),
    (_LAYER + r"self_attention\.linear_qkv\.bias", r"layers.\1.attn.linear_qkv_bias"),
    (_LAYER + r"(?:self_attention\.linear_qkv\.layer_norm_bias|input_layernorm\.bias)", r"layers.\1.attn_norm.bias"),
    (_LAYER + r"self_attention\.linear_proj\.bias", r"layers.\1.attn.wo.bias"),
    (_LAYER + r"(?:mlp\.linear_fc1\.layer_norm_bias|pre_mlp_layernorm\.bias)", r"layers.\1.mlp_norm.bias"),
    (_LAYER + r"mlp\.linear_fc1\.bias", r"layers.\1.mlp.linear_fc1_bias"),
    (_LAYER + r"mlp\.linear_fc2\.bias", r"layers.\1.mlp.w_down.bias"),
]


def checkpoint_dir(path) -> Path | None:
    """The directory holding the mp_rank_* folders of a Megatron checkpoint, or None when `path` is not one."""
    rank0 = dmc_megatron.checkpoint_file(path)
    return None if rank0 is None else rank0.parent.parent


def rank_files(path) -> list[Path]:
    """model_optim_rng.pt of ranks 0 .. p-1, in order; an error for missing ranks or pipeline parallelism."""
    directory = checkpoint_dir(path)
    if directory is None:
        raise CheckpointError(f"{path} is not a Megatron checkpoint (no mp_rank_00/{dmc_megatron.CHECKPOINT_FILE})")
    names = sorted(p.name for p in directory.iterdir() if p.is_dir() and p.name.startswith("mp_rank_"))
    if any(RANK_DIR.fullmatch(name) is None for name in names):
        raise CheckpointError(f"{directory}: pipeline-parallel shards (mp_rank_TT_PPP) are not supported: {names}")
    expected = [f"mp_rank_{rank:02d}" for rank in range(len(names))]
    if names != expected:
        raise CheckpointError(f"{directory}: tensor-parallel ranks must be mp_rank_00 .. {expected[-1]}; found {names}")
    files = [directory / name / dmc_megatron.CHECKPOINT_FILE for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"missing rank files: {', '.join(missing)}")
    return files


def swiglu(args: argparse.Namespace) -> bool:
    return bool(vars(args).get("swiglu", False))


def is_dmc(args: argparse.Namespace) -> bool:
    return any(key.startswith("dmc_") for key in vars(args))


def merge(shards: list[dict[str, torch.Tensor]], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The unsharded Megatron state dict of p rank state dicts (module docstring)."""
    merged = {}
    for key, first in shards[0].items():
        if not isinstance(first, torch.Tensor):
            continue
        parts = [shard[key] for shard in shards]
        if key.endswith(("linear_fc1.weight", "linear_fc1.bias")) and swiglu(args):
            halves = [part.chunk(2, dim=0) for part in parts]
            merged[key] = torch.cat([h[0] for h in halves] + [h[1] for h in halves])
        elif COLUMN_PARALLEL.fullmatch(key):
            merged[key] = torch.cat(parts, dim=0)
        elif ROW_PARALLEL.fullmatch(key):
            merged[key] = torch.cat(parts, dim=1)
        else:
            merged[key] = first
    return merged


def split(full: dict[str, torch.Tensor], args: argparse.Namespace, tp: int) -> list[dict[str, torch.Tensor]]:
    """The p = tp rank state dicts of an unsharded Megatron state dict (the inverse of `merge`)."""
    a = vars(args)
    heads, groups = a["num_attention_heads"], a.get("num_query_groups") or a["num_attention_heads"]
    if not a.get("group_query_attention"):
        groups = heads
    for count, what in (
        (heads, "attention heads"),
        (groups, "query groups"),
        (a["ffn_hidden_size"], "ffn_hidden_size"),
    ):
        if count % tp:
            raise CheckpointError(f"{what}={count} is not divisible by --tp {tp}")
    vocab = full["embedding.word_embeddings.weight"].shape[0]
    if vocab % tp:
        raise CheckpointError(f"the padded vocabulary of {vocab} is not divisible by --tp {tp}")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for key, tensor in full.items():
        if key.endswith(("linear_fc1.weight", "linear_fc1.bias")) and swiglu(args):
            gate, up = (half.chunk(tp) for half in tensor.chunk(2, dim=0))
            parts = [torch.cat([g, u]) for g, u in zip(gate, up)]
        elif COLUMN_PARALLEL.fullmatch(key):
            parts = tensor.chunk(tp, dim=0)
        elif ROW_PARALLEL.fullmatch(key):
            parts = tensor.chunk(tp, dim=1)
        else:
            parts = [tensor] * tp
        for shard, part in zip(shards, parts):
            shard[key] = part.clone()  # contiguous, and not a view of the whole tensor when saved
    return shards


def read_shards(path) -> tuple[argparse.Namespace, list[dict[str, torch.Tensor]]]:
    """(args of rank 0, every rank's model state dict), tensors memory-mapped."""
    checkpoints = [dmc_megatron.read(file) for file in rank_files(path)]
    args = checkpoints[0]["args"]
    tp = vars(args).get("tensor_model_parallel_size")
    if tp is not None and tp != len(checkpoints):
        raise CheckpointError(
            f"{path}: args say tensor_model_parallel_size={tp}, but {len(checkpoints)} ranks are present"
        )
    return args, [c["model"] for c in checkpoints]


def read_config(path) -> ModelConfig:
    return config_from_args(dmc_megatron.read(rank_files(path)[0])["args"])


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """DMC (args with dmc_* fields), Llama-style (--swiglu, RMSNorm) or GPT (LayerNorm, GeLU) config."""
    if is_dmc(args):
        return dmc_megatron.config_from_args(args)
    a = vars(args)
    common = dmc_megatron.decoder_fields(args)
    position = {"learned_absolute": "learned", "rope": "rope", "none": "none"}.get(
        a.get("position_embedding_type", "learned_absolute")
    )
    if position is None:
        raise CheckpointError(f"unsupported position_embedding_type {a['position_embedding_type']!r}")
    bias = a.get("add_bias_linear", True)
    if swiglu(args):
        if a.get("normalization", "RMSNorm") != "RMSNorm" or bias:
            raise CheckpointError("a --swiglu Megatron model is imported with RMSNorm and no linear biases only")
        return LlamaConfig(**common, position=position, rope_theta=float(a.get("rotary_base", 10000)))
    if a.get("normalization", "LayerNorm") != "LayerNorm":
        raise CheckpointError("a GPT Megatron model (no --swiglu) is imported with LayerNorm only")
    return GPTConfig(
        **common,
        position=position,
        activation="gelu_tanh" if a.get("openai_gelu", False) else "gelu",
        attention_bias=bias,
        mlp_bias=bias,
    )


def accepts(raw_config: dict) -> bool:
    """Megatron checkpoints have no config.json: the registry finds them by their mp_rank folders."""
    return False


def load_tensors(path) -> dict[str, torch.Tensor]:
    """The merged (unsharded) Megatron state dict of every rank of `path`."""
    args, shards = read_shards(path)
    if not any(re.match(_LAYER + r"self_attention\.linear_qkv\.weight", key) for key in shards[0]):
        raise CheckpointError(f"{rank_files(path)[0]}: no Megatron-Core decoder layers found (decoder.layers.N...)")
    return merge(shards, args)


def state_dict_from_hf(tensors: dict[str, torch.Tensor], config: ModelConfig):
    """(zoo state dict, keys no rule maps) from merged Megatron-Core tensors (the registry's converter call)."""
    renamed, unexpected = rename_keys(tensors, RULES, dmc_megatron.IGNORED)
    state = {}
    for key, tensor in renamed.items():
        if key.endswith((".attn.linear_qkv", ".attn.linear_qkv_bias")):
            prefix = key[: key.rindex("linear_qkv")]
            suffix = "bias" if key.endswith("_bias") else "weight"
            parts = dmc_megatron.split_qkv(tensor if tensor.dim() == 2 else tensor[:, None], config)
            for name, part in zip("qkv", parts):
                state[f"{prefix}w{name}.{suffix}"] = part.reshape(-1, *tensor.shape[1:]).contiguous()
        elif key.endswith((".mlp.linear_fc1", ".mlp.linear_fc1_bias")):
            prefix = key[: key.rindex("linear_fc1")]
            suffix = "bias" if key.endswith("_bias") else "weight"
            if config.mlp == "gated":
                gate, up = tensor.chunk(2, dim=0)
                state[f"{prefix}w_gate.{suffix}"], state[f"{prefix}w_up.{suffix}"] = gate.contiguous(), up.contiguous()
            else:
                state[f"{prefix}w_up.{suffix}"] = tensor
        else:
            state[key] = tensor
    return state, unexpected


def is_resharded_checkpoint(path: Path) -> bool:
    """Whether `path` holds a checkpoint `reshard` wrote (its marker file beside the rank folders)."""
    return (Path(path) / MARKER_FILE).is_file() and checkpoint_dir(path) is not None


def reshard(source, tp: int, out, overwrite: bool = False) -> Path:
    """Write the checkpoint at `source` as `tp` tensor-parallel ranks at `out` (release/mp_rank_XX/...,
        latest_checkpointed_iteration.txt = release), args updated to tensor_model_parallel_size = tp; tp = 1
        merges. `out` must be new or empty, or a checkpoint this function wrote (its marker file, zoo_reshard.json)
    replaced with `overwrite`."""
    args, shards = read_shards(source)
    config_from_args(args)  # a format the zoo loads, before any work
    new_shards = split(merge(shards, args), args, tp)
    new_args = argparse.Namespace(**(vars(args) | {"tensor_model_parallel_size": tp}))

    def write(tmp: Path):
        (tmp / MARKER_FILE).write_text(json.dumps({"written_by": "zoo reshard", "tensor_parallel": tp}))
        (tmp / TRACKER_FILE).write_text("release")
        for rank, shard in enumerate(new_shards):
            rank_dir = tmp / "release" / f"mp_rank_{rank:02d}"
            rank_dir.mkdir(parents=True)
            torch.save({"model": shard, "args": new_args, "iteration": 0}, rank_dir / dmc_megatron.CHECKPOINT_FILE)

    owned = (MARKER_FILE, TRACKER_FILE, "release")
    return write_directory_atomically(
        out, write, owned, overwrite, holds_ours=is_resharded_checkpoint, kind="checkpoint written by zoo reshard"
    )
