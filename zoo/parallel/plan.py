"""The sharding plan: which module of each family is split how (docs/parallel.md has the table).

The plan is one walk over the module tree with a rule per module type, so a family is sharded by the
modules it is built of:
- SelfAttention and its subclasses (DMC, T5, Hourglass funnel attention): q by query heads, k and v by KV
  heads (column-parallel), wo row-parallel; the module's head counts become local, so its state (KV
  cache, DMC slots and sums, T5 cross cache) is allocated for the rank's heads only;
- GatedMLP (gate and up split alike) and MLP: column-parallel in, row-parallel out;
- MoE: tensor parallelism inside every expert (the hidden axis of w_gate_up and w_down), the router
  replicated, the shared expert split the same way, one all-reduce for experts plus shared expert;
- Mamba2Mixer: in_proj per rank in the [z | x | B | C | dt] layout (heads and groups), conv channels,
  dt_bias, A_log, D and the gated-norm weight by heads / groups, out_proj row-parallel;
- RelativeAttention (dynamic pooling): the fused [q | k | v] rows and the position projection by heads;
  the model's u, v biases by heads;
- T5Stack: the relative-bias table by heads;
- Re-ViLM's gated cross-attention blocks and caption-encoder layers: q, k, v by heads, the output
  row-parallel (so the media and retrieved-caption keys and values in the state are the rank's heads);
  the LM inside (`model.lm`) as llama; the CLIP ViT and the Perceiver resampler replicated (they run once
  per request, and the retriever's embedding-model id hashes the whole ViT);
- the token embedding vocab-parallel and the LM head column-parallel over the (padded) vocabulary.
Everything else stays replicated: norms, learned position embeddings, MoE routers, Hourglass pooling and
upsampling projections and their ring / shortened-token state, the dynamic-pooling boundary predictor and
null group, and the dynamic-pooling segment state (residual-stream vectors every rank needs whole).
"""

import torch
from torch import nn

from zoo.models.dynpool.model import DynPoolLM, RelativeAttention
from zoo.models.t5.model import T5Stack
from zoo.nn.attention import SelfAttention
from zoo.nn.flamingo import EncoderLayer, GatedCrossAttentionBlock
from zoo.nn.mamba2 import Mamba2Mixer
from zoo.nn.mlp import MLP, GatedMLP
from zoo.nn.moe import MoE
from zoo.parallel.comm import TensorParallelGroup
from zoo.parallel.layers import (
    ReduceOutput,
    RowParallelLinear,
    VocabParallelEmbedding,
    require_divisible,
    shard_input,
    shard_output,
    shard_parameter,
    shard_vocab_head,
)


def shard_attention(attn: SelfAttention, tp: TensorParallelGroup) -> None:
    require_divisible(attn.n_heads, tp.size, "attention heads")
    require_divisible(attn.n_kv_heads, tp.size, "KV heads (query groups)")
    for projection in (attn.wq, attn.wk, attn.wv):
        shard_output(projection, tp)
    attn.wo = RowParallelLinear(attn.wo, tp)
    attn.n_heads //= tp.size
    attn.n_kv_heads //= tp.size


def shard_mlp(mlp: nn.Module, tp: TensorParallelGroup, reduce: bool = True) -> None:
    """Column-parallel input projections, the output projection row-parallel (without its all-reduce when
    `reduce` is False: the caller sums)."""
    require_divisible(mlp.w_up.out_features, tp.size, "MLP hidden size (d_ff)")
    shard_output(mlp.w_up, tp)
    if isinstance(mlp, GatedMLP):
        shard_output(mlp.w_gate, tp)
    if reduce:
        mlp.w_down = RowParallelLinear(mlp.w_down, tp)
    else:
        shard_input(mlp.w_down, tp)


def shard_moe(moe: MoE, tp: TensorParallelGroup) -> ReduceOutput:
    hidden = moe.w_down.shape[2]
    require_divisible(hidden, tp.size, "MoE expert hidden size (d_expert)")
    if moe.gated:
        shard_parameter(moe, "w_gate_up", 1, [hidden, hidden], tp)  # [gate rows; up rows], each split
    else:
        shard_parameter(moe, "w_up", 1, [hidden], tp)
    shard_parameter(moe, "w_down", 2, [hidden], tp)
    if moe.shared is not None:
        shard_mlp(moe.shared, tp, reduce=False)  # its partial output joins the experts' in one all-reduce
    return ReduceOutput(moe, tp)


def shard_mamba(mixer: Mamba2Mixer, tp: TensorParallelGroup) -> None:
    require_divisible(mixer.n_heads, tp.size, "Mamba-2 heads (nheads)")
    require_divisible(mixer.n_groups, tp.size, "Mamba-2 groups (ngroups)")
    inner, groups, heads = mixer.d_inner, mixer.n_groups * mixer.d_state, mixer.n_heads
    shard_output(mixer.in_proj, tp, [inner, inner, groups, groups, heads])  # [z | x | B | C | dt]
    conv_layout = [inner, groups, groups]  # [x | B | C]
    shard_parameter(mixer.conv1d, "weight", 0, conv_layout, tp)
    if mixer.conv1d.bias is not None:
        shard_parameter(mixer.conv1d, "bias", 0, conv_layout, tp)
    for name in ("dt_bias", "A_log", "D"):
        shard_parameter(mixer, name, 0, [heads], tp)
    shard_parameter(mixer.norm, "weight", 0, [inner], tp)  # group_size is unchanged: each group on one rank
    mixer.out_proj = RowParallelLinear(mixer.out_proj, tp)
    mixer.n_heads //= tp.size
    mixer.n_groups //= tp.size
    mixer.d_inner //= tp.size
    mixer.conv_dim //= tp.size
    conv = mixer.conv1d
    conv.in_channels = conv.out_channels = conv.groups = mixer.conv_dim


def shard_heads_attention(attn: nn.Module, projections: tuple[str, str, str, str], tp: TensorParallelGroup) -> None:
    """Multi-head attention with separate (q, k, v, out) projections named `projections` and `n_heads`."""
    require_divisible(attn.n_heads, tp.size, "attention heads")
    *qkv, out = projections
    for name in qkv:
        shard_output(getattr(attn, name), tp)
    setattr(attn, out, RowParallelLinear(getattr(attn, out), tp))
    attn.n_heads //= tp.size


def shard_relative_attention(attn: nn.Module, tp: TensorParallelGroup) -> None:
    require_divisible(attn.n_heads, tp.size, "attention heads")
    width = attn.n_heads * attn.head_dim
    shard_output(attn.qkv, tp, [width, width, width])
    shard_output(attn.r_net, tp)
    attn.out = RowParallelLinear(attn.out, tp)
    attn.n_heads //= tp.size


def shard_heads_table(module: nn.Module, name: str, dim: int, tp: TensorParallelGroup) -> None:
    """A parameter with one entry per attention head along `dim` (T5's bias table, dynamic pooling's u, v)."""
    heads = getattr(module, name).shape[dim]
    require_divisible(heads, tp.size, "attention heads")
    shard_parameter(module, name, dim, [heads], tp)


@torch.no_grad()
def shard_modules(model: nn.Module, tp: TensorParallelGroup) -> nn.Module:
    """Shard `model` in place for this rank (module docstring). The model's forward then returns logits over
    this rank's slice of the padded vocabulary (zoo.parallel.TensorParallelModel gathers them)."""
    handled: set[int] = set()
    for parent in list(model.modules()):
        if id(parent) in handled:
            continue
        if isinstance(parent, T5Stack):
            shard_heads_table(parent.relative_bias, "weight", 1, tp)
            parent.relative_bias.embedding_dim = parent.relative_bias.weight.shape[1]
        if isinstance(parent, DynPoolLM):
            shard_heads_table(parent, "content_bias", 0, tp)
            shard_heads_table(parent, "position_bias", 0, tp)
        for name, child in list(parent.named_children()):
            if isinstance(child, SelfAttention):
                shard_attention(child, tp)
            elif isinstance(child, RelativeAttention):
                shard_relative_attention(child, tp)
            elif isinstance(child, GatedCrossAttentionBlock):
                shard_heads_attention(child, ("q_proj", "k_proj", "v_proj", "o_proj"), tp)
            elif isinstance(child, EncoderLayer):
                shard_heads_attention(child, ("wq", "wk", "wv", "wo"), tp)
            elif isinstance(child, Mamba2Mixer):
                shard_mamba(child, tp)
            elif isinstance(child, MoE):
                setattr(parent, name, shard_moe(child, tp))
                handled.update(id(m) for m in child.modules())
            elif isinstance(child, (GatedMLP, MLP)):
                shard_mlp(child, tp)
    language_model = getattr(model, "lm", model)  # Re-ViLM's vocabulary is its LM's
    language_model.embed = VocabParallelEmbedding(language_model.embed, tp)
    if getattr(language_model, "lm_head", None) is not None:
        shard_vocab_head(language_model.lm_head, tp)
    return model
