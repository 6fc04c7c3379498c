"""The dynamic-pooling transformer (Nawrot, Chorowski, Łańcucki, Ponti 2023; docs/algorithms.md §6), with
cached incremental decoding.

Full forward (the reference's order):
    h = pre(embed(x));  b = boundaries(x, h)
    s = shortened(LN([null; SegmentMean(h, b)]));  y = post(Upsample(s, b) + h);  logits = head(y)
Every layer is a post-LN Transformer-XL layer with relative attention; the u, v biases are shared by all
layers of the three stacks, each layer has its own relative-position projection.

Decoding keeps the segment that is still open as a running sum and count. Each step pushes the open
segment's mean through the shortened stack as a candidate (one cached step, written at slot `segments`);
when the new token closes the segment the candidate becomes `latest` and `segments` grows by one, otherwise
the slot is overwritten by the next candidate. Every step computes the candidate, so nothing branches on
data; the shortened cache is sized by the bound of one segment per token.

State (dict of tensors; layer index i over pre, shortened, post layers in order; P = n_pre):
    k{i}, v{i}        (B, H, T, D)   keys / values: token slots (pre, post) or segment slots (shortened)
    null_k{i}, null_v{i} (B, H, D)   the null group's key and value (shortened layers; constant, set by prefill)
    rel{i}            (H, T, D)      R_m = W_r pe(m) + b_r for distances m < T, shared by the batch (prefill)
    segments{P}       (B,) int64     segments closed so far
    open_sum{P}       (B, d) fp32    sum of the open segment's pre-stack outputs
    open_count{P}     (B,) int64     its token count
    latest{P}         (B, d)         shortened output the post stack adds (the null group's before a close)
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.dynpool.config import DynPoolConfig
from zoo.nn.mlp import MLP
from zoo.nn.norms import LayerNorm
from zoo.nn.pooling import (
    BoundaryPredictor,
    binomial_prior_loss,
    fixed_boundaries,
    gumbel_sigmoid_boundaries,
    segment_means,
    token_boundaries,
    upsample,
)
from zoo.nn.state import StateEntry, allocate_state, layer_view
from zoo.nn.transformer import init_normal


def sinusoid(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """pe(m) = [sin(m w), cos(m w)] with w_i = 10000^(-2i/dim): (...,) -> (..., dim), fp32."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32) / dim)
    angles = distances.float()[..., None] * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RelativeAttention(nn.Module):
    """Transformer-XL attention: score(i, j) = ((q_i + u).k_j + (q_i + v).R_{i-j}) / sqrt(D), causal.

    R_m = W_r pe(m) + b_r is the key of relative distance m (`position_table`); u and v are the model-level
    biases. Attention sees a table R (H, M, D) of distances 0..M-1 rather than recomputing it per step."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(d_model, 3 * n_heads * head_dim)
        self.r_net = nn.Linear(d_model, n_heads * head_dim)
        self.out = nn.Linear(n_heads * head_dim, d_model)

    def position_keys(self, encoding: torch.Tensor) -> torch.Tensor:
        """R_m from pe(m) (`sinusoid`): (..., d) -> (..., H, D)."""
        keys = self.r_net(encoding.to(self.r_net.weight.dtype))
        return keys.view(*encoding.shape[:-1], self.n_heads, self.head_dim)

    def position_table(self, length: int, device) -> torch.Tensor:
        """R_m for distances 0..length-1 as (H, length, D), the layout attention reads."""
        distances = torch.arange(length, device=device)
        return self.position_keys(sinusoid(distances, self.r_net.in_features)).transpose(0, 1)

    def project(self, x: torch.Tensor):
        """x (B, L, d) -> q, k, v, each (B, H, L, D)."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x, u, v, rel):
        """Causal attention over x (B, L, d); rel (H, >= L, D). Returns (output, keys, values)."""
        q, k, values = self.project(x)
        B, L = x.shape[:2]
        H = self.n_heads
        # (B, H, L, L): [i, m] = (q_i + v).R_{L-1-m} / sqrt(D) (distances reversed; scaled on the small operand)
        by_reversed_distance = ((q + v[:, None]) * self.scale) @ rel[:, :L].flip(1).transpose(-1, -2)
        # Transformer-XL's relative shift: a zero column in front, read back row-shifted, puts distance
        # i - j at [i, j] for j <= i (the entries past the diagonal are then masked)
        padded = torch.cat([by_reversed_distance.new_zeros(B, H, L, 1), by_reversed_distance], -1)
        position = padded.view(B, H, L + 1, L)[:, :, 1:].view(B, H, L, L)
        future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)
        bias = position.masked_fill_(future, float("-inf"))
        out = F.scaled_dot_product_attention(q + u[:, None], k, values, attn_mask=bias, scale=self.scale)
        return self.out(out.transpose(1, 2).reshape(B, L, -1)), k, values

    def decode(self, x, u, v, slot, cache, null=None):
        """One query per row (x (B, 1, d)) at cache slot `slot` (B,): writes its key and value there and
        attends to slots 0..slot at distances slot - j, plus the `null` (key, value, position key), each
        (B, H, D), when given (the shortened stack's null group)."""
        q, k, values = self.project(x)
        B = x.shape[0]
        rows = torch.arange(B, device=x.device)
        k_cache, v_cache, rel = cache["k"], cache["v"], cache["rel"]
        k_cache[rows, :, slot] = k[:, :, 0]
        v_cache[rows, :, slot] = values[:, :, 0]
        T = k_cache.shape[2]
        content_q, position_q = q + u[:, None], q + v[:, None]  # (B, H, 1, D)
        content = (content_q @ k_cache.transpose(-1, -2))[:, :, 0]  # (B, H, T)
        by_distance = (position_q[:, :, 0].transpose(0, 1) @ rel.transpose(-1, -2)).transpose(0, 1)  # (B, H, T)
        distance = slot[:, None] - torch.arange(T, device=x.device)  # (B, T)
        position = by_distance.gather(-1, distance.clamp(min=0)[:, None].expand(B, self.n_heads, T))
        scores = ((content + position).float() * self.scale).masked_fill(distance[:, None] < 0, float("-inf"))
        if null is None:
            probs = scores.softmax(-1).to(v_cache.dtype)
            out = (probs[:, :, None] @ v_cache)[:, :, 0]
        else:
            null_k, null_v, null_rel = null
            null_score = ((content_q[:, :, 0] * null_k).sum(-1) + (position_q[:, :, 0] * null_rel).sum(-1)).float()
            probs = torch.cat([null_score[..., None] * self.scale, scores], -1).softmax(-1).to(v_cache.dtype)
            out = probs[:, :, :1] * null_v + (probs[:, :, None, 1:] @ v_cache)[:, :, 0]
        return self.out(out.reshape(B, 1, -1))


class PostNormLayer(nn.Module):
    """The reference's Transformer-XL layer (post-LN): y = LN(x + attn(x)); out = LN(y + FF(y))."""

    def __init__(self, c: DynPoolConfig):
        super().__init__()
        self.attn = RelativeAttention(c.d_model, c.n_heads, c.head_dim)
        self.attn_norm = LayerNorm(c.d_model, c.norm_eps)
        self.mlp = MLP(c.d_model, c.d_ff, act="gelu", bias=True)
        self.mlp_norm = LayerNorm(c.d_model, c.norm_eps)

    def forward(self, x, u, v, rel):
        attended, k, values = self.attn(x, u, v, rel)
        y = self.attn_norm(x + attended)
        return self.mlp_norm(y + self.mlp(y)), k, values

    def decode(self, x, u, v, slot, cache, null=None):
        y = self.attn_norm(x + self.attn.decode(x, u, v, slot, cache, null))
        return self.mlp_norm(y + self.mlp(y))


class TrainOutput(NamedTuple):
    logits: torch.Tensor  # (B, L, V)
    boundary_loss: torch.Tensor  # binomial-prior loss of the predictor (0 for rule-based boundaries)
    boundaries: torch.Tensor  # (B, L) float 0/1, straight-through in predictor mode


class DynPoolLM(nn.Module):
    def __init__(self, config: DynPoolConfig):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pre_layers = nn.ModuleList(PostNormLayer(c) for _ in range(c.n_pre))
        self.short_layers = nn.ModuleList(PostNormLayer(c) for _ in range(c.n_short))
        self.post_layers = nn.ModuleList(PostNormLayer(c) for _ in range(c.n_post))
        self.content_bias = nn.Parameter(torch.empty(c.n_heads, c.head_dim))  # u (the reference's r_w_bias)
        self.position_bias = nn.Parameter(torch.empty(c.n_heads, c.head_dim))  # v (r_r_bias)
        self.null_group = nn.Parameter(torch.empty(c.d_model))
        self.down_norm = LayerNorm(c.d_model, c.norm_eps)
        self.boundary_predictor = BoundaryPredictor(c.d_model, c.d_ff) if c.boundaries == "predictor" else None
        self.lm_head = nn.Linear(c.d_model, c.vocab_size)
        self.reset_parameters()

    @property
    def layers(self) -> list[PostNormLayer]:
        """Every layer in order: pre, shortened, post (the state's layer index)."""
        return [*self.pre_layers, *self.short_layers, *self.post_layers]

    def reset_parameters(self):
        """The reference's init: Linear and embedding weights and the u, v biases ~ N(0, init_std), biases 0,
        LayerNorm weights ~ N(1, init_std), the null group ~ N(0, 1)."""
        std = self.config.init_std
        for module in self.modules():
            if not init_normal(module, std) and isinstance(module, LayerNorm):
                nn.init.normal_(module.weight, mean=1.0, std=std)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.content_bias, std=std)
        nn.init.normal_(self.position_bias, std=std)
        nn.init.normal_(self.null_group)

    # -- boundaries ------------------------------------------------------------------------------------

    def rule_boundaries(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.boundaries == "fixed":
            return fixed_boundaries(positions, c.fixed_stride)
        return token_boundaries(input_ids, c.boundary_token_ids)

    # -- full sequence ---------------------------------------------------------------------------------

    def position_tables(self, layers, length, device) -> list[torch.Tensor]:
        """Each layer's relative-position keys of distances 0..length-1, (H, length, D)."""
        return [layer.attn.position_table(length, device) for layer in layers]

    def run_stack(self, layers, x, tables, keys_values: list | None = None):
        """x through `layers`, each with its table (at least x's length); (k, v) per layer appended."""
        for layer, rel in zip(layers, tables, strict=True):
            x, k, v = layer(x, self.content_bias, self.position_bias, rel)
            if keys_values is not None:
                keys_values.append((k, v))
        return x

    def pre_stack(self, input_ids, tables=None, keys_values=None) -> torch.Tensor:
        if tables is None:
            tables = self.position_tables(self.pre_layers, input_ids.shape[1], input_ids.device)
        return self.run_stack(self.pre_layers, self.embed(input_ids), tables, keys_values)

    def hard_boundaries(self, input_ids, h) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(boundaries (B, L) bool, predictor logits or None): the rule, or p > 0.5 (logit > 0)."""
        if self.boundary_predictor is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            return self.rule_boundaries(input_ids, positions), None
        logits = self.boundary_predictor(h)
        return logits > 0, logits

    def shorten_and_post(self, h, boundaries, n_segments, short_tables=None, post_tables=None, keys_values=None):
        """From the pre-stack output: pooling into [null; n_segments means], the shortened stack, upsampling
        plus the residual h, the post stack. Returns (post-stack output (B, L, d), shortened output)."""
        B, L, _ = h.shape
        means = segment_means(h, boundaries, n_segments).to(h.dtype)
        pooled = torch.cat([self.null_group.to(h.dtype).expand(B, 1, -1), means], 1)
        if short_tables is None:
            short_tables = self.position_tables(self.short_layers, n_segments + 1, h.device)
            post_tables = self.position_tables(self.post_layers, L, h.device)
        shortened = self.run_stack(self.short_layers, self.down_norm(pooled), short_tables, keys_values)
        y = self.run_stack(self.post_layers, upsample(shortened, boundaries) + h, post_tables, keys_values)
        return y, shortened

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) with hard boundaries. The shortened sequence is sized by the config's bound
        (max_segments), so nothing syncs with the host; slots past a row's segments are causally later than
        every token that reads the row's segments, so they change nothing."""
        h = self.pre_stack(input_ids)
        boundaries, _ = self.hard_boundaries(input_ids, h)
        y, _ = self.shorten_and_post(h, boundaries, self.config.max_segments(input_ids.shape[1]))
        return self.lm_head(y)

    def forward_train(self, input_ids: torch.Tensor, generator: torch.Generator | None = None) -> TrainOutput:
        """The training forward on full (unpadded) sequences: predictor boundaries drawn by Gumbel-sigmoid
        with straight-through, and the binomial-prior loss (0 for rule boundaries). As in the reference the
        shortened sequence holds only the segments closed somewhere in the batch, whose count is read on the
        host (one sync: this path is for training and is never captured)."""
        h = self.pre_stack(input_ids)
        if self.boundary_predictor is None:
            boundaries = self.hard_boundaries(input_ids, h)[0].float()
            loss = h.new_zeros((), dtype=torch.float32)
        else:
            boundaries = gumbel_sigmoid_boundaries(self.boundary_predictor(h), self.config.temperature, generator)
            loss = binomial_prior_loss(boundaries, self.config.prior)
        y, _ = self.shorten_and_post(h, boundaries, max(1, int(boundaries.detach().sum(1).max())))
        return TrainOutput(self.lm_head(y), loss, boundaries)

    # -- cached decoding -------------------------------------------------------------------------------

    def is_shortened(self, index: int) -> bool:
        return self.config.n_pre <= index < self.config.n_pre + self.config.n_short

    def state_spec(self) -> list[StateEntry]:
        c = self.config
        attn = self.layers[0].attn  # its head count is local when the model is tensor-parallel
        H, D, P = attn.n_heads, attn.head_dim, c.n_pre
        kv, null = ("batch", H, "cache", D), ("batch", H, D)
        spec = []
        for i in range(c.n_layers):
            spec += [StateEntry("k", i, kv, None), StateEntry("v", i, kv, None)]
            if self.is_shortened(i):
                spec += [StateEntry("null_k", i, null, None), StateEntry("null_v", i, null, None)]
        spec += [
            StateEntry("segments", P, ("batch",), "int64"),
            StateEntry("open_sum", P, ("batch", c.d_model), "float32"),
            StateEntry("open_count", P, ("batch",), "int64"),
            StateEntry("latest", P, ("batch", c.d_model), None),
        ]
        return spec + [StateEntry("rel", i, (H, "cache", D), None) for i in range(c.n_layers)]

    def init_state(self, batch: int, max_len: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
        param = next(self.parameters())
        return allocate_state(self.state_spec(), batch, max_len, dtype or param.dtype, device or param.device)

    @staticmethod
    def layer_cache(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
        return layer_view(state, ("k", "v", "rel"), index)

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """input_ids (B, L) right-padded, lengths (B,). Returns the logits at lengths - 1 and the state.

        One full pass over the padded batch (causal, so padding changes no real position). Pre and post
        layers write token slots 0..L-1, shortened layers the null group and segment slots 0..S-1 (S the
        bound of segments in L tokens); slots past a row's own tokens or segments hold padding that decode
        overwrites. The open segment's sum and count and the latest shortened output are each row's own."""
        c = self.config
        B, L = input_ids.shape
        P, S = c.n_pre, c.n_short
        T = state["k0"].shape[2]
        # distances 0..T: the shortened pass may reach distance T (the null group before L = T segments)
        tables = self.position_tables(self.layers, T + 1, input_ids.device)
        for i, table in enumerate(tables):
            state[f"rel{i}"].copy_(table[:, :T])
        n_segments = c.max_segments(L)
        keys_values = []
        h = self.pre_stack(input_ids, tables[:P], keys_values)
        boundaries, _ = self.hard_boundaries(input_ids, h)
        y, shortened = self.shorten_and_post(h, boundaries, n_segments, tables[P : P + S], tables[P + S :], keys_values)
        for i, (k, v) in enumerate(keys_values):
            if self.is_shortened(i):
                state[f"null_k{i}"].copy_(k[:, :, 0])
                state[f"null_v{i}"].copy_(v[:, :, 0])
                k, v = k[:, :, 1:], v[:, :, 1:]
            state[f"k{i}"][:, :, : k.shape[2]] = k
            state[f"v{i}"][:, :, : v.shape[2]] = v
        real = torch.arange(L, device=input_ids.device) < lengths[:, None]
        ends = boundaries.long()
        closed = (ends * real).sum(1)
        in_open_segment = real & (ends.cumsum(1) - ends == closed[:, None])
        rows = torch.arange(B, device=input_ids.device)
        state[f"segments{P}"].copy_(closed)
        state[f"open_sum{P}"].copy_((h.float() * in_open_segment[..., None]).sum(1))
        state[f"open_count{P}"].copy_(in_open_segment.sum(1))
        state[f"latest{P}"].copy_(shortened[rows, closed])
        return self.lm_head(y[rows, lengths - 1]), state

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """tokens, positions (B,): one token per row at its own position. Returns logits (B, V), state."""
        c = self.config
        P, S = c.n_pre, c.n_short
        u, v = self.content_bias, self.position_bias
        x = self.embed(tokens[:, None])
        for i, layer in enumerate(self.pre_layers):
            x = layer.decode(x, u, v, positions, self.layer_cache(state, i))
        h = x[:, 0]
        if self.boundary_predictor is None:
            closes = self.rule_boundaries(tokens, positions)
        else:
            closes = self.boundary_predictor(h) > 0
        closed = state[f"segments{P}"]
        open_sum = state[f"open_sum{P}"] + h.float()
        open_count = state[f"open_count{P}"] + 1
        # the open segment as the candidate shortened token: query index closed + 1, cache slot `closed`
        candidate = self.down_norm((open_sum / open_count[:, None]).to(h.dtype))[:, None]
        null_distance = sinusoid(closed + 1, c.d_model)  # the null group sits at shortened index 0
        for j, layer in enumerate(self.short_layers):
            i = P + j
            null = (state[f"null_k{i}"], state[f"null_v{i}"], layer.attn.position_keys(null_distance))
            candidate = layer.decode(candidate, u, v, closed, self.layer_cache(state, i), null)
        latest = torch.where(closes[:, None], candidate[:, 0], state[f"latest{P}"])
        y = (latest + h)[:, None]
        for j, layer in enumerate(self.post_layers):
            y = layer.decode(y, u, v, positions, self.layer_cache(state, P + S + j))
        state[f"latest{P}"].copy_(latest)
        state[f"open_sum{P}"].copy_(open_sum.masked_fill(closes[:, None], 0.0))
        state[f"open_count{P}"].copy_(open_count.masked_fill(closes, 0))
        state[f"segments{P}"].copy_(closed + closes.long())
        return self.lm_head(y[:, 0]), state
