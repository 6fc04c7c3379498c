"""Megatron-Core tensor-parallel checkpoints written by hand for the tests: the full state dict under
Megatron names, then each rank's shard by explicit per-tensor rules (torch.chunk / cat of Megatron's
layouts), independent of zoo.parallel.megatron, so a layout bug there cannot cancel itself out."""

import argparse

import torch

PADDED_VOCAB = 264  # 256 padded as Megatron pads (a multiple of 8 x tp): the extra rows are zeros


def full_state(model) -> dict[str, torch.Tensor]:
    """A zoo DecoderLM's weights under Megatron-Core (TransformerEngine) names, vocabulary padded."""
    c = model.config
    D, G = c.head_dim, c.n_heads // c.n_kv_heads

    def pad(weight):
        return torch.cat([weight, weight.new_zeros(PADDED_VOCAB - weight.shape[0], *weight.shape[1:])])

    state = {"embedding.word_embeddings.weight": pad(model.embed.weight)}
    if model.pos_embed is not None:
        state["embedding.position_embeddings.weight"] = model.pos_embed.weight
    for i, layer in enumerate(model.layers):
        p, attn = f"decoder.layers.{i}.", layer.attn
        for suffix in ("weight", "bias"):
            q, k, v = (getattr(getattr(attn, name), suffix, None) for name in ("wq", "wk", "wv"))
            if q is None:
                continue
            q, k, v = q.reshape(c.n_kv_heads, G * D, -1), k.reshape(c.n_kv_heads, D, -1), v.reshape(c.n_kv_heads, D, -1)
            state[p + f"self_attention.linear_qkv.{suffix}"] = torch.cat([q, k, v], dim=1).reshape(-1, *q.shape[2:])
            if suffix == "bias":
                state[p + "self_attention.linear_qkv.bias"] = state[p + "self_attention.linear_qkv.bias"].flatten()
        state[p + "self_attention.linear_qkv.layer_norm_weight"] = layer.attn_norm.weight
        state[p + "self_attention.linear_proj.weight"] = attn.wo.weight
        state[p + "mlp.linear_fc1.layer_norm_weight"] = layer.mlp_norm.weight
        if c.norm == "layer":
            state[p + "self_attention.linear_qkv.layer_norm_bias"] = layer.attn_norm.bias
            state[p + "mlp.linear_fc1.layer_norm_bias"] = layer.mlp_norm.bias
            state[p + "self_attention.linear_proj.bias"] = attn.wo.bias
            state[p + "mlp.linear_fc1.bias"] = layer.mlp.w_up.bias
            state[p + "mlp.linear_fc2.bias"] = layer.mlp.w_down.bias
        if c.mlp == "gated":
            state[p + "mlp.linear_fc1.weight"] = torch.cat([layer.mlp.w_gate.weight, layer.mlp.w_up.weight])
        else:
            state[p + "mlp.linear_fc1.weight"] = layer.mlp.w_up.weight
        state[p + "mlp.linear_fc2.weight"] = layer.mlp.w_down.weight
        state[p + "self_attention.core_attention._extra_state"] = torch.zeros(0)
    state["decoder.final_layernorm.weight"] = model.norm.weight
    if c.norm == "layer":
        state["decoder.final_layernorm.bias"] = model.norm.bias
    if model.lm_head is not None:
        state["output_layer.weight"] = pad(model.lm_head.weight)
    return {k: v.detach().clone() for k, v in state.items()}


def shard(state: dict, config, rank: int, tp: int) -> dict[str, torch.Tensor]:
    """Rank `rank` of `tp`: Megatron's per-tensor layouts."""
    D, G = config.head_dim, config.n_heads // config.n_kv_heads
    out = {}
    for key, tensor in state.items():
        if key.endswith("linear_qkv.weight") or key.endswith("linear_qkv.bias"):
            groups = tensor.reshape(config.n_kv_heads, (G + 2) * D, *tensor.shape[1:])  # whole query groups
            part = groups.chunk(tp, dim=0)[rank].reshape(-1, *tensor.shape[1:])
        elif key.endswith("linear_fc1.weight") or key.endswith("linear_fc1.bias"):
            if config.mlp == "gated":  # [gate | up] per rank
                gate, up = tensor.chunk(2, dim=0)
                part = torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
            else:
                part = tensor.chunk(tp, dim=0)[rank]
        elif key.endswith(("linear_proj.weight", "linear_fc2.weight")):
            part = tensor.chunk(tp, dim=1)[rank]
        elif key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            part = tensor.chunk(tp, dim=0)[rank]  # vocab-parallel over the padded vocabulary
        else:
            part = tensor
        out[key] = part.clone()
    return out


def args_of(config, tp: int, **extra) -> argparse.Namespace:
    gpt = config.family == "gpt"
    return argparse.Namespace(
        num_layers=config.n_layers,
        hidden_size=config.d_model,
        num_attention_heads=config.n_heads,
        group_query_attention=config.n_kv_heads != config.n_heads,
        num_query_groups=config.n_kv_heads,
        ffn_hidden_size=config.d_ff,
        padded_vocab_size=PADDED_VOCAB,
        max_position_embeddings=config.max_seq_len,
        norm_epsilon=config.norm_eps,
        swiglu=not gpt,
        normalization="LayerNorm" if gpt else "RMSNorm",
        add_bias_linear=gpt,
        position_embedding_type="learned_absolute" if gpt else "rope",
        untie_embeddings_and_output_weights=not config.tie_embeddings,
        tensor_model_parallel_size=tp,
        **extra,
    )


def write_checkpoint(path, model, tp: int, **extra_args) -> None:
    """`path`/iter_0000010/mp_rank_XX/model_optim_rng.pt for XX < tp, and the iteration tracker."""
    full = full_state(model)
    for rank in range(tp):
        rank_dir = path / "iter_0000010" / f"mp_rank_{rank:02d}"
        rank_dir.mkdir(parents=True)
        checkpoint = {"model": shard(full, model.config, rank, tp), "args": args_of(model.config, tp, **extra_args)}
        torch.save(checkpoint, rank_dir / "model_optim_rng.pt")
    (path / "latest_checkpointed_iteration.txt").write_text("10")
