"""Sequence parallelism for prefill (Korthikanti et al. 2022; docs/algorithms.md §8), for the decoder
stack (zoo/nn/transformer.py: llama, gpt, dmc, moe).

The residual stream and the norms run on this rank's 1/p of the sequence. Around each sublayer, the
all-reduce after the row-parallel projection becomes a reduce-scatter along the sequence and an all-gather
of the normed input comes before the column-parallel projections: the same bytes as tensor parallelism
alone, with the norm and residual activations divided by p. The embedding's all-reduce is a reduce-scatter
too. At the end each row's last prompt token lives on one rank: every rank contributes its rows (zeros
elsewhere) to one (B, d) all-reduce, so only the last positions are gathered, not the whole sequence.

Decode steps (one token per row) never use it (Megatron's inference asserts it off as well).
"""

import torch

from zoo.nn.state import layer_view
from zoo.nn.transformer import DecoderLM
from zoo.parallel.comm import TensorParallelGroup


def supports_sequence_parallel(model) -> bool:
    return isinstance(model, DecoderLM)


def sequence_parallel_prefill(model: DecoderLM, tp: TensorParallelGroup, input_ids, lengths, state):
    """DecoderLM.prefill with the residual stream split along the sequence (L % p == 0). Returns this rank's
    vocabulary slice of the logits at lengths - 1, and the state (each rank's heads)."""
    B, L = input_ids.shape
    chunk = L // tp.size
    positions = torch.arange(L, device=input_ids.device).expand(B, L)
    tp.sequence_parallel = True
    try:
        x = model.embed(input_ids)  # reduce-scattered: (B, L / p, d)
        if model.pos_embed is not None:
            x = x + model.pos_embed(positions[:, tp.rank * chunk : (tp.rank + 1) * chunk])
        rope = model.rope(positions, x.dtype)
        for i, layer in enumerate(model.layers):
            view = layer_view(state, layer.attn.state_names, i)
            x = x + layer.attn(tp.all_gather(layer.attn_norm(x), dim=1), rope, view, lengths)
            x = x + layer.mlp(tp.all_gather(layer.mlp_norm(x), dim=1))
    finally:
        tp.sequence_parallel = False
    local = lengths - 1 - tp.rank * chunk
    mine = (local >= 0) & (local < chunk)
    rows = x[torch.arange(B, device=x.device), local.clamp(0, chunk - 1)] * mine[:, None].to(x.dtype)
    return model.logits(tp.all_reduce(rows)), state
