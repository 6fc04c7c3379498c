"""T5 v1.1 (nanoT5): a bidirectional encoder and a causal decoder with cross-attention, docs/algorithms.md §4.

Every sublayer is pre-norm (RMSNorm, no mean, no bias) and residual. Attention has no biases and no
1/sqrt(d) scaling; the position information is a learned bias per (relative-position bucket, head), one
table per stack, computed once per call and shared by all the stack's layers. Cross-attention has no
position bias. The FFN is GEGLU. One embedding is shared by both stacks; lm_head is separate (untied) and
the decoder output is not rescaled.

The generation entry points read the prompt as the encoder input:
- `prefill(input_ids, lengths, state)`: runs the encoder over the right-padded encoder inputs, writes the
  cross-attention cache (every decoder layer's K, V of the encoder output, computed once per request) and
  the encoder padding mask into `state`, then feeds the decoder its start token (pad id 0) at decoder
  position 0. Returns the logits of the first generated token (B, V).
- `decode_step(tokens, positions, state)`: one decoder token per row at decoder position `positions[b]`
  (1 for the first step after prefill); self-attention reads and extends the self-attention cache,
  cross-attention reads the cross cache as it is.
State keys: "k{i}", "v{i}" (decoder layer i's self-attention), "cross_k{i}", "cross_v{i}" (its cross-attention
over the encoder output), each (B, H, T, D); "encoder_mask0" (B, T) bool, True at real encoder positions.
Both caches share the slot axis T, which must hold the longest encoder input and every decoder token.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.t5.config import T5Config
from zoo.nn.attention import SelfAttention
from zoo.nn.mlp import GatedMLP
from zoo.nn.norms import RMSNorm
from zoo.nn.state import StateEntry, allocate_state, layer_view, state_spec

ENCODER_MASK = "encoder_mask"  # the state entry (one, under layer 0) holding the encoder padding mask


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int):
    """The bucket of each relative position (key position - query position), docs/algorithms.md §4.1.

    Bidirectional (encoder): half the buckets for keys before the query, half for keys after it. Causal
    (decoder): keys after the query (masked anyway) share bucket 0. Within a half, distances below
    max_exact = half / 2 get a bucket each, larger ones log-spaced buckets up to max_distance, clipped.
    """
    if bidirectional:
        buckets //= 2
        offset = (relative > 0).long() * buckets
        distance = relative.abs()
    else:
        offset = torch.zeros_like(relative)
        distance = (-relative).clamp(min=0)
    max_exact = buckets // 2
    # log of distance / max_exact, read only where distance >= max_exact (clamped so no log(0) appears)
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (buckets - max_exact)).long()).clamp(max=buckets - 1)
    return offset + torch.where(distance < max_exact, distance, large)


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive attention bias (B, 1, 1, S) from a key mask (B, S): 0 where True, -inf where False."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))[:, None, None]


class T5Attention(SelfAttention):
    """SelfAttention's projections (n_heads * head_dim wide, no biases) with T5's unscaled scores and an
    additive bias (relative positions and masks) in place of the causal mask."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int):
        super().__init__(d_model, n_heads, n_heads, head_dim)
        self.scale = 1.0  # T5 folds 1/sqrt(head_dim) into the initialisation of wq

    def heads(self, projection: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return projection(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.wk, x), self.heads(self.wv, x)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """wo(softmax(q k^T + bias) v); q: (B, H, L, D), k, v: (B, H, S, D), bias broadcast to (B, H, L, S)."""
        return self.output(F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Self-attention over x (B, L, d) with the additive bias."""
        return self.attend(self.heads(self.wq, x), *self.keys_values(x), bias)


class EncoderBlock(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = T5Attention(c.d_model, c.n_heads, c.head_dim)
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = GatedMLP(c.d_model, c.d_ff, act=c.activation)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), bias)
        return x + self.mlp(self.mlp_norm(x))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, GEGLU; each pre-norm and residual."""

    state_names = ("k", "v", "cross_k", "cross_v")

    def __init__(self, c: T5Config):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = T5Attention(c.d_model, c.n_heads, c.head_dim)
        self.cross_norm = RMSNorm(c.d_model, c.norm_eps)
        self.cross_attn = T5Attention(c.d_model, c.n_heads, c.head_dim)
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = GatedMLP(c.d_model, c.d_ff, act=c.activation)

    def state_shapes(self, batch, max_len):
        shape = (batch, self.attn.n_heads, max_len, self.attn.head_dim)
        return {name: (shape, None) for name in self.state_names}

    def forward(self, x, self_bias, cross_k, cross_v, cross_bias):
        """The full (uncached) pass over decoder inputs x (B, L, d); self_bias holds the causal mask."""
        x = x + self.attn(self.attn_norm(x), self_bias)
        h = self.cross_norm(x)
        x = x + self.cross_attn.attend(self.cross_attn.heads(self.cross_attn.wq, h), cross_k, cross_v, cross_bias)
        return x + self.mlp(self.mlp_norm(x))

    def decode(self, x, positions, self_bias, cross_bias, state):
        """One token per row, x (B, 1, d): writes its k, v at slot positions[b] of the self-attention cache,
        attends to slots 0..positions[b] (self_bias masks the rest) and to the cross cache."""
        h = self.attn_norm(x)
        k, v = self.attn.keys_values(h)
        rows = torch.arange(x.shape[0], device=x.device)
        state["k"][rows, :, positions] = k[:, :, 0]
        state["v"][rows, :, positions] = v[:, :, 0]
        x = x + self.attn.attend(self.attn.heads(self.attn.wq, h), state["k"], state["v"], self_bias)
        h = self.cross_norm(x)
        q = self.cross_attn.heads(self.cross_attn.wq, h)
        x = x + self.cross_attn.attend(q, state["cross_k"], state["cross_v"], cross_bias)
        return x + self.mlp(self.mlp_norm(x))


class T5Stack(nn.Module):
    """The layers of one side, the relative position bias table they share, and the final norm."""

    def __init__(self, c: T5Config, block: type[nn.Module], n_layers: int, bidirectional: bool):
        super().__init__()
        self.bidirectional, self.buckets, self.max_distance = bidirectional, c.relative_buckets, c.relative_max_distance
        self.relative_bias = nn.Embedding(c.relative_buckets, c.n_heads)
        self.layers = nn.ModuleList(block(c) for _ in range(n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)

    def position_bias(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """(..., H, Lq, Lk) bias of queries at query_positions (..., Lq) over keys at key_positions (Lk,)."""
        relative = key_positions - query_positions[..., None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.buckets, self.max_distance)
        return self.relative_bias(buckets).movedim(-1, -3)


class T5LM(nn.Module):
    """T5ForConditionalGeneration's math with the zoo's generation entry points (module docstring)."""

    encoder_decoder = True  # the engine reads prompts as encoder inputs; decoding starts at position 1

    def __init__(self, config: T5Config):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.encoder = T5Stack(c, EncoderBlock, c.n_layers, bidirectional=True)
        self.decoder = T5Stack(c, DecoderBlock, c.n_decoder_layers, bidirectional=False)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        """nanoT5's / HF's T5 init (docs/algorithms.md §4.1), std factor init_factor: embedding and lm_head
        N(0, 1); wq N(0, (d * head_dim)^-1/2); wk, wv N(0, d^-1/2); wo N(0, (H * head_dim)^-1/2); GEGLU
        inputs N(0, d^-1/2), output N(0, d_ff^-1/2); relative bias N(0, d^-1/2); norms 1."""
        c, f = self.config, self.config.init_factor
        d, inner = c.d_model, c.n_heads * c.head_dim
        nn.init.normal_(self.embed.weight, std=f)
        nn.init.normal_(self.lm_head.weight, std=f)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.reset_parameters()
            elif isinstance(module, T5Attention):
                nn.init.normal_(module.wq.weight, std=f * (d * c.head_dim) ** -0.5)
                nn.init.normal_(module.wk.weight, std=f * d**-0.5)
                nn.init.normal_(module.wv.weight, std=f * d**-0.5)
                nn.init.normal_(module.wo.weight, std=f * inner**-0.5)
            elif isinstance(module, GatedMLP):
                nn.init.normal_(module.w_gate.weight, std=f * d**-0.5)
                nn.init.normal_(module.w_up.weight, std=f * d**-0.5)
                nn.init.normal_(module.w_down.weight, std=f * c.d_ff**-0.5)
            elif isinstance(module, T5Stack):
                nn.init.normal_(module.relative_bias.weight, std=f * d**-0.5)

    # -- encoder ------------------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, S, d) of right-padded input_ids (B, S) with real lengths (B,). Padded keys are
        masked; the rows at padded positions are computed but never read."""
        S = input_ids.shape[1]
        positions = torch.arange(S, device=input_ids.device)
        x = self.embed(input_ids)
        key_mask = positions < lengths[:, None]
        bias = self.encoder.position_bias(positions, positions)[None] + key_padding_bias(key_mask, x.dtype)
        for layer in self.encoder.layers:
            x = layer(x, bias)
        return self.encoder.norm(x)

    def cross_keys_values(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention K, V (B, H, S, D) of the encoder output."""
        return [layer.cross_attn.keys_values(encoded) for layer in self.decoder.layers]

    def write_cross_cache(self, encoded: torch.Tensor, lengths: torch.Tensor, state: dict) -> dict:
        """Cross K, V of the encoder output into slots 0..S-1 of the cross cache, and the encoder mask
        (True at slots < lengths[b]; padding and unused slots False, so attention never reads them)."""
        S = encoded.shape[1]
        for i, (k, v) in enumerate(self.cross_keys_values(encoded)):
            state[f"cross_k{i}"][:, :, :S] = k
            state[f"cross_v{i}"][:, :, :S] = v
        mask = state[f"{ENCODER_MASK}0"]
        mask.copy_(torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])
        return state

    # -- full forward (the oracle of the cached paths) -------------------------------------------------

    def forward(
        self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) of decoder_input_ids (B, L) (starting with the start token) given
        encoder inputs (B, S), right-padded to `lengths` (default: all S)."""
        B, S = input_ids.shape
        if lengths is None:
            lengths = torch.full((B,), S, device=input_ids.device)
        encoded = self.encode(input_ids, lengths)
        cross_bias = key_padding_bias(torch.arange(S, device=input_ids.device) < lengths[:, None], encoded.dtype)
        L = decoder_input_ids.shape[1]
        positions = torch.arange(L, device=input_ids.device)
        x = self.embed(decoder_input_ids)
        causal = torch.zeros(L, L, dtype=x.dtype, device=x.device).masked_fill(
            positions[None] > positions[:, None], float("-inf")
        )
        self_bias = self.decoder.position_bias(positions, positions)[None] + causal
        for layer, (k, v) in zip(self.decoder.layers, self.cross_keys_values(encoded)):
            x = layer(x, self_bias, k, v, cross_bias)
        return self.lm_head(self.decoder.norm(x))

    # -- generation -------------------------------------------------------------------------------------

    def stateful_layers(self):
        return [(i, layer) for i, layer in enumerate(self.decoder.layers)]

    def state_spec(self) -> list[StateEntry]:
        return [*state_spec(self.stateful_layers()), StateEntry(ENCODER_MASK, 0, ("batch", "cache"), "bool")]

    def init_state(self, batch: int, max_len: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
        """Zero caches of max_len slots: max_len must hold the longest encoder input and every decoder token."""
        param = next(self.parameters())
        return allocate_state(self.state_spec(), batch, max_len, dtype or param.dtype, device or param.device)

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """Encoder inputs (B, S) right-padded to lengths (B,): encode, fill the cross cache and the encoder
        mask, and run the decoder's start token at position 0. Returns (logits of the first new token, state)."""
        self.write_cross_cache(self.encode(input_ids, lengths), lengths, state)
        start = torch.full_like(lengths, self.config.decoder_start_token_id)
        return self.decode_step(start, torch.zeros_like(lengths), state)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """Decoder tokens (B,) at decoder positions (B,) -> (next-token logits (B, V), state)."""
        x = self.embed(tokens[:, None])
        T = state["k0"].shape[2]
        slots = torch.arange(T, device=x.device)
        future = (slots > positions[:, None])[:, None, None]  # (B, 1, 1, T)
        self_bias = self.decoder.position_bias(positions[:, None], slots).masked_fill(future, float("-inf"))
        cross_bias = key_padding_bias(state[f"{ENCODER_MASK}0"], x.dtype)
        for i, layer in enumerate(self.decoder.layers):
            x = layer.decode(x, positions, self_bias, cross_bias, layer_view(state, layer.state_names, i))
        return self.lm_head(self.decoder.norm(x[:, 0])), state
