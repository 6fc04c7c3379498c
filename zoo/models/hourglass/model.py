"""The Hourglass LM (docs/algorithms.md §5): vanilla layers around a valley of layers on a shortened sequence.

    x -> pre blocks -> norm -> VALLEY -> post blocks -> norm -> lm_head
    VALLEY(k): s = downsample_k(x shifted right by k-1); s = the next level's stack on s (blocks, norm,
               and, if there is a deeper level, its valley, post blocks, norm); u = upsample_k(s, x);
               out = norm(u) + x

A level whose total factor is K runs RoPE attention at positions p·K (its token p summarises the inputs
up to p·K), so the rotations agree across levels. No ShiftRight(1) before the embedding as in trax: here,
as in every zoo LM, the logits at position p predict token p+1.

Incremental decoding (zoo/nn/shortening.py): a valley at level position p writes its input into a ring of
its last k inputs, forms shortened token g = ceil(p / k) from the ring, runs the level below at position
g, and upsamples shortened token p // k: the fresh one when p % k == 0 (its group just completed), else
the one kept in the state. Every row does all of it every step (no branch on data); when p % k != 0 the
shortened token is incomplete and what it writes is never read: its KV slot g is invisible until step gk
overwrites it, and rings and kept tokens are written at indices that the next complete step rewrites
before reading. The same holds one level further down, whose positions repeat while the level above
fills a group.

State keys (docs/state.md): "k{i}", "v{i}" (B, Hkv, T, D) for every block and attention resampler, and
"window{i}" (B, k, d), "shortened{i}" (B, d) for every valley, i numbering the stateful modules top down.
"""

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.hourglass.config import HourglassConfig, Level
from zoo.nn.attention import causal_attention
from zoo.nn.norms import make_norm
from zoo.nn.rope import RotaryEmbedding
from zoo.nn.shortening import (
    AttentionDownsampling,
    AttentionUpsampling,
    AveragePooling,
    LinearPooling,
    LinearUpsampling,
    RepeatUpsampling,
    complete_groups,
    shortened_length,
    write_prefix,
)
from zoo.nn.state import StateEntry, allocate_state, layer_view, state_spec
from zoo.nn.transformer import DecoderBlock, init_submodules

POOLINGS = {"average": AveragePooling, "linear": LinearPooling}
UPSAMPLINGS = {"repeat": RepeatUpsampling, "linear": LinearUpsampling}


def downsampler(config: HourglassConfig, k: int) -> nn.Module:
    if config.downsampling == "attention":
        inner = POOLINGS[config.resampling_inner_down](k, config.d_model)
        return AttentionDownsampling(k, config.block_config(), inner)
    return POOLINGS[config.downsampling](k, config.d_model)


def upsampler(config: HourglassConfig, k: int) -> nn.Module:
    if config.upsampling == "attention":
        inner = UPSAMPLINGS[config.resampling_inner_up](k, config.d_model)
        return AttentionUpsampling(k, config.block_config(), inner)
    return UPSAMPLINGS[config.upsampling](k, config.d_model)


class Blocks(nn.Module):
    """n transformer blocks then a norm, at one level; `indices` are the blocks' state indices."""

    def __init__(self, config: HourglassConfig, n: int, counter):
        super().__init__()
        block = config.block_config()
        self.blocks = nn.ModuleList(DecoderBlock(block) for _ in range(n))
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.indices = [next(counter) for _ in range(n)]

    def stateful(self):
        return [(i, b.attn) for i, b in zip(self.indices, self.blocks)]

    def forward(self, x, rope, state=None):
        """With `state`, keys and values go to the caches' leading slots through write_prefix: DecoderBlock's
        own prefill writes all L, and a shortened level's L counts padding groups (it may exceed the cache)."""
        for i, block in zip(self.indices, self.blocks):
            if state is None:
                x = block(x, rope)
                continue
            q, k, v = block.attn.project(block.attn_norm(x), rope)
            cache = layer_view(state, block.attn.state_names, i)
            write_prefix(cache["k"], k)
            write_prefix(cache["v"], v)
            x = x + block.attn.output(causal_attention(q, k, v, block.attn.scale))
            x = x + block.mlp(block.mlp_norm(x))
        return self.norm(x)

    def decode(self, x, positions, rope, state):
        for i, block in zip(self.indices, self.blocks):
            x = block.decode(x, positions, rope, layer_view(state, block.attn.state_names, i))
        return self.norm(x)


class Stack(nn.Module):
    """One level: pre blocks, and unless it is the deepest level, a valley and post blocks."""

    def __init__(self, config: HourglassConfig, levels: list[Level], counter):
        super().__init__()
        level = levels[0]
        self.factor = level.factor
        self.pre = Blocks(config, level.pre_layers, counter)
        self.valley = Valley(config, levels[1:], counter) if len(levels) > 1 else None
        self.post = Blocks(config, level.post_layers, counter) if self.valley is not None else None

    def stateful(self):
        layers = self.pre.stateful()
        if self.valley is not None:
            layers += self.valley.stateful() + self.post.stateful()
        return layers

    def forward(self, x, rotary, state=None, lengths=None):
        """x: (B, L, d) at this level; with `state` (prefill), lengths: (B,) each row's real length here."""
        positions = torch.arange(x.shape[1], device=x.device)[None] * self.factor
        x = self.pre(x, rotary(positions, x.dtype), state)
        if self.valley is None:
            return x
        x = self.valley(x, rotary, state, lengths)
        return self.post(x, rotary(positions, x.dtype), state)

    def decode(self, x, positions, rotary, state):
        """x: (B, 1, d); positions: (B,) at this level (they repeat below the top while a group fills)."""
        rope = rotary(positions[:, None] * self.factor, x.dtype)
        x = self.pre.decode(x, positions, rope, state)
        if self.valley is None:
            return x
        x = self.valley.decode(x, positions, rotary, state)
        return self.post.decode(x, positions, rope, state)


class Valley(nn.Module):
    """Shorten by k = levels[0].step, run the level below, upsample, add the residual."""

    state_names = ("window", "shortened")

    def __init__(self, config: HourglassConfig, levels: list[Level], counter):
        super().__init__()
        self.k, self.factor, self.d_model = levels[0].step, levels[0].factor, config.d_model
        self.index = next(counter)
        self.down = downsampler(config, self.k)
        self.down_index = next(counter) if config.downsampling == "attention" else None
        self.inner = Stack(config, levels, counter)
        self.up = upsampler(config, self.k)
        self.up_index = next(counter) if config.upsampling == "attention" else None
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)

    def state_shapes(self, batch, max_len):
        return {"window": ((batch, self.k, self.d_model), None), "shortened": ((batch, self.d_model), None)}

    def stateful(self):
        layers = [(self.index, self)]
        if self.down_index is not None:
            layers.append((self.down_index, self.down))
        layers += self.inner.stateful()
        if self.up_index is not None:
            layers.append((self.up_index, self.up))
        return layers

    def view(self, state, module, index):
        return None if state is None or index is None else layer_view(state, module.state_names, index)

    def ropes(self, rotary, positions, shortened, dtype):
        """Rotations at this level's positions and at the shortened ones (positions in input tokens)."""
        outer = self.factor // self.k
        return rotary(positions * outer, dtype), rotary(shortened * self.factor, dtype)

    def forward(self, x, rotary, state=None, lengths=None):
        L, k = x.shape[1], self.k
        positions = torch.arange(L, device=x.device)[None]
        shortened_positions = torch.arange(shortened_length(L, k), device=x.device)[None]
        rope_x, rope_s = self.ropes(rotary, positions, shortened_positions, x.dtype)
        s = self.down(x, rope_x, rope_s, self.view(state, self.down, self.down_index))
        short_lengths = None if lengths is None else complete_groups(lengths, k)
        s = self.inner(s, rotary, state, short_lengths)
        if state is not None:
            self.write_state(layer_view(state, self.state_names, self.index), x, s, lengths, short_lengths)
        u = self.up(s, x, rope_x, rope_s, self.view(state, self.up, self.up_index))
        return self.norm(u) + x

    def write_state(self, state, x, s, lengths, short_lengths):
        """Prefill: the ring of each row's last k inputs (zeros before position 0; ring slot r holds the
        position = r mod k) and its last complete shortened token, which upsampling uses until the next."""
        B, L, d = x.shape
        slots = torch.arange(self.k, device=x.device)
        ring_positions = lengths[:, None] - self.k + torch.remainder(slots[None] - lengths[:, None], self.k)
        gathered = x.gather(1, ring_positions.clamp(0, L - 1)[..., None].expand(B, self.k, d))
        state["window"].copy_(torch.where((ring_positions >= 0)[..., None], gathered, torch.zeros_like(gathered)))
        state["shortened"].copy_(s[torch.arange(B, device=x.device), short_lengths - 1])

    def decode(self, x, positions, rotary, state):
        B, _, d = x.shape
        k = self.k
        own = layer_view(state, self.state_names, self.index)
        rows = torch.arange(B, device=x.device)
        own["window"][rows, positions % k] = x[:, 0]
        oldest_first = torch.remainder(positions[:, None] - k + 1 + torch.arange(k, device=x.device), k)
        window = own["window"].gather(1, oldest_first[..., None].expand(B, k, d))
        shortened_positions = (positions + k - 1) // k  # the group ending at or after this position
        rope_x, rope_s = self.ropes(rotary, positions[:, None], shortened_positions[:, None], x.dtype)
        s0 = self.down.decode(window, x, positions, rope_x, rope_s, self.view(state, self.down, self.down_index))
        s_new = self.inner.decode(s0, shortened_positions, rotary, state)
        complete = (positions % k == 0)[:, None, None]
        s_used = torch.where(complete, s_new, own["shortened"][:, None])
        own["shortened"].copy_(s_used[:, 0])
        up_state = self.view(state, self.up, self.up_index)
        u = self.up.decode(s_new, s_used, x, positions, shortened_positions, rope_x, rope_s, up_state)
        return self.norm(u) + x


class HourglassLM(nn.Module):
    def __init__(self, config: HourglassConfig):
        super().__init__()
        c = self.config = config
        block = c.block_config()
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.rotary = RotaryEmbedding(block.head_dim, c.rope_theta)
        self.stack = Stack(c, c.levels, itertools.count())
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        """Linear and embedding weights ~ N(0, init_std), biases 0, norm weights 1."""
        init_submodules(self, self.config.init_std)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The top stack ends with its norm, so h goes straight to the head."""
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.logits(self.stack(self.embed(input_ids), self.rotary))

    def stateful_layers(self):
        return self.stack.stateful()

    def state_spec(self) -> list[StateEntry]:
        return state_spec(self.stateful_layers())

    def init_state(self, batch: int, max_len: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
        param = next(self.parameters())
        return allocate_state(self.state_spec(), batch, max_len, dtype or param.dtype, device or param.device)

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """input_ids: (B, L) right-padded; lengths: (B,) real prompt lengths. Returns logits at lengths-1."""
        x = self.stack(self.embed(input_ids), self.rotary, state, lengths)
        last = x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        return self.logits(last), state

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """tokens, positions: (B,). Token b sits at positions[b]; returns its next-token logits (B, V)."""
        x = self.stack.decode(self.embed(tokens[:, None]), positions, self.rotary, state)
        return self.logits(x[:, 0]), state
