"""Causal down- and up-sampling of a sequence by an integer factor k (Hourglass, docs/algorithms.md §5).

Shortened token j summarises the group of k inputs at positions jk-k+1 .. jk: the input shifted right by
k-1 (zeros before position 0), then cut into groups of k. It is complete once position jk is, and its
upsampled copies land on positions jk .. jk+k-1, so position p only ever sees shortened token p // k,
which depends on inputs <= p. A sequence of length L gives shortened_length(L) tokens.

Every downsampler has `forward(x, rope_x, rope_s, state=None)` over a whole sequence (B, L, d) ->
(B, shortened_length(L), d), and `decode(window, x, positions, rope_x, rope_s, state)` for one step: `window`
(B, k, d) holds the k inputs ending at `positions` (oldest first), x (B, 1, d) is the newest of them.
Every upsampler has `forward(s, x, rope_x, rope_s, state=None)` -> (B, L, d) and `decode(s_new, s_used,
x, positions, shortened_positions, rope_x, rope_s, state)`: `s_used` (B, 1, d) is shortened token
positions // k, `s_new` the one being written at `shortened_positions` (the same token when it just
completed). `rope_x` / `rope_s` are the rotations at the full-length / shortened positions (the attention
resamplers use them; the others ignore them). The attention resamplers hold a KV cache {"k", "v"}:
downsampling over the full-length inputs, upsampling over the shortened tokens.
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.attention import SelfAttention, cached_attention
from zoo.nn.norms import make_norm
from zoo.nn.transformer import DecoderConfig, make_mlp


def complete_groups(length, k: int):
    """ceil(L / k): the shortened tokens whose k inputs all lie in a sequence of L."""
    return (length + k - 1) // k


def shortened_length(length, k: int):
    """ceil(L / k) + 1 or + 2: the complete groups, then one or two groups of padding.

    The padding groups are causal (they only see inputs after every complete group) and make the
    shortened length at least 2 for every L >= 1, which torch.export needs: its size checks on a length
    derived from L (a matmul splitting B·S into B and S guards S != 1) are then proved for all L instead
    of becoming runtime asserts that one-token prompts fail."""
    return (length + 3 * k - 2) // k


def shifted_groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L, d) -> (B, shortened_length(L), k, d): group j holds inputs jk-k+1 .. jk, zeros before position
    0 and after L-1 (groups from complete_groups(L) on are padding)."""
    S = shortened_length(x.shape[1], k)
    padded = F.pad(x, (0, 0, k - 1, 2 * k - 1))  # group j is padded[jk .. jk+k-1]
    # Indexed selects, no reshapes or slices of the symbolic length: those make torch.export guard on
    # relations between the shortened length and L that it cannot prove for every L.
    starts = torch.arange(S, device=x.device) * k
    return torch.stack([padded.index_select(1, starts + i) for i in range(k)], dim=2)


def write_prefix(cache: torch.Tensor, values: torch.Tensor) -> None:
    """The leading slots of a KV cache (B, Hkv, T, D) from values (B, Hkv, L, D): min(L, T) of them, as a
    shortened level's padding groups may make L > T. Indexed copies: slices would make torch.export
    guard on relations between the lengths."""
    index = torch.arange(torch.sym_min(values.shape[2], cache.shape[2]), device=cache.device)
    cache.index_copy_(2, index, values.index_select(2, index))


def ungroup(u: torch.Tensor, length: int) -> torch.Tensor:
    """(B, S, k, d) sub-positions of the shortened tokens -> (B, length, d), position p = jk + i."""
    k = u.shape[2]
    positions = torch.arange(length, device=u.device)
    return u[:, positions // k, positions % k]


def select_subposition(u: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, 1, k, d) sub-positions of one shortened token per row -> (B, 1, d) at sub-position positions % k."""
    B, _, k, d = u.shape
    index = (positions % k).view(B, 1, 1, 1).expand(B, 1, 1, d)
    return u.gather(2, index)[:, :, 0]


class AveragePooling(nn.Module):
    """Shortened token = the mean of its group."""

    def __init__(self, k: int, d_model: int):
        super().__init__()
        self.k = k

    def pool(self, groups: torch.Tensor) -> torch.Tensor:
        return groups.mean(dim=2)

    def forward(self, x, rope_x=None, rope_s=None, state=None):
        return self.pool(shifted_groups(x, self.k))

    def decode(self, window, x, positions, rope_x=None, rope_s=None, state=None):
        return self.pool(window[:, None])


class LinearPooling(AveragePooling):
    """Shortened token = Dense(k·d -> d) of its group, concatenated oldest first."""

    def __init__(self, k: int, d_model: int):
        super().__init__(k, d_model)
        self.proj = nn.Linear(k * d_model, d_model)

    def pool(self, groups: torch.Tensor) -> torch.Tensor:
        return self.proj(groups.flatten(-2))


class RepeatUpsampling(nn.Module):
    """Each shortened token copied to its k positions."""

    def __init__(self, k: int, d_model: int):
        super().__init__()
        self.k = k

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """(B, S, d) -> (B, S, k, d)."""
        return s[:, :, None].expand(-1, -1, self.k, -1)

    def forward(self, s, x, rope_x=None, rope_s=None, state=None):
        return ungroup(self.expand(s), x.shape[1])

    def decode(self, s_new, s_used, x, positions, shortened_positions=None, rope_x=None, rope_s=None, state=None):
        return select_subposition(self.expand(s_used), positions)


class LinearUpsampling(RepeatUpsampling):
    """Dense(d -> k·d), split into the k positions of the token."""

    def __init__(self, k: int, d_model: int):
        super().__init__(k, d_model)
        self.proj = nn.Linear(d_model, k * d_model)

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        return self.proj(s).unflatten(-1, (self.k, s.shape[-1]))


class FunnelAttention(SelfAttention):
    """Attention from queries at one resolution to keys and values at another, through the explicit
    visibility given by the resampler (a boolean mask in prefill, the last visible slot in decode)."""

    def attend(self, queries, keys, q_rope, kv_rope, visible, state=None):
        """queries (B, Lq, d), keys (B, Lk, d), visible (Lq, Lk); with `state`, writes the keys and values
        into the leading slots."""
        q, _, _ = self.project(queries, q_rope)
        _, k, v = self.project(keys, kv_rope)
        if state is not None:
            write_prefix(state["k"], k)
            write_prefix(state["v"], v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=self.scale, enable_gqa=True)
        return self.output(out)

    def attend_cached(self, query, key, q_rope, kv_rope, slots, last_visible, state):
        """One query (B, 1, d) per row; writes `key`'s k, v at slot `slots` (B,), attends to 0..last_visible."""
        q, _, _ = self.project(query, q_rope)
        _, k, v = self.project(key, kv_rope)
        rows = torch.arange(query.shape[0], device=query.device)
        state["k"][rows, :, slots] = k[:, :, 0]
        state["v"][rows, :, slots] = v[:, :, 0]
        return self.output(cached_attention(q, state["k"], state["v"], last_visible, self.scale))


class ResamplingAttention(nn.Module):
    """The shared parts of attention resampling: input norm, a norm after the inner resampling, funnel
    attention, then a pre-norm MLP (trax AttentionResampling)."""

    state_names = ("k", "v")

    def __init__(self, k: int, config: DecoderConfig, inner: nn.Module):
        super().__init__()
        c = config
        self.k = k
        self.inner = inner
        self.input_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.resampled_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.attn = FunnelAttention(c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, bias=c.attention_bias)
        self.mlp_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.mlp = make_mlp(c)

    def state_shapes(self, batch, max_len):
        return self.attn.state_shapes(batch, max_len)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.mlp_norm(x))


class AttentionDownsampling(ResamplingAttention):
    """h = norm(x); s0 = norm(pool(groups of h)); s = s0 + attn(q=s0, kv=h); s + MLP(norm(s)).

    Shortened token j attends to the inputs at positions <= jk: its own group and every earlier one (trax's
    funnel mask, without the k-1 zero pads that trax also lets it see). The KV cache holds the inputs."""

    def forward(self, x, rope_x, rope_s, state=None):
        L = x.shape[1]
        s0 = self.resampled_norm(self.inner.pool(self.input_norm(shifted_groups(x, self.k))))
        key_positions = torch.arange(L, device=x.device)
        query_ends = torch.arange(s0.shape[1], device=x.device) * self.k
        visible = key_positions[None, :] <= query_ends[:, None]
        attended = self.attn.attend(s0, self.input_norm(x), rope_s, rope_x, visible, state)
        return self.feed_forward(s0 + attended)

    def decode(self, window, x, positions, rope_x, rope_s, state):
        s0 = self.resampled_norm(self.inner.pool(self.input_norm(window[:, None])))
        attended = self.attn.attend_cached(s0, self.input_norm(x), rope_s, rope_x, positions, positions, state)
        return self.feed_forward(s0 + attended)


class AttentionUpsampling(ResamplingAttention):
    """h = norm(s); u0 = norm(upsample(h)) + x; u = u0 + attn(q=u0, kv=h); u + MLP(norm(u)).

    Position p attends to the shortened tokens j <= p // k. The KV cache holds the shortened tokens."""

    def forward(self, s, x, rope_x, rope_s, state=None):
        L = x.shape[1]
        h = self.input_norm(s)
        u0 = self.resampled_norm(ungroup(self.inner.expand(h), L)) + x
        shortened = torch.arange(s.shape[1], device=x.device)
        visible = shortened[None, :] <= torch.arange(L, device=x.device)[:, None] // self.k
        return self.feed_forward(u0 + self.attn.attend(u0, h, rope_x, rope_s, visible, state))

    def decode(self, s_new, s_used, x, positions, shortened_positions, rope_x, rope_s, state):
        up = select_subposition(self.inner.expand(self.input_norm(s_used)), positions)
        u0 = self.resampled_norm(up) + x
        attended = self.attn.attend_cached(
            u0, self.input_norm(s_new), rope_x, rope_s, shortened_positions, positions // self.k, state
        )
        return self.feed_forward(u0 + attended)
