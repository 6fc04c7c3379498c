"""Dynamic Memory Compression attention (Nawrot et al. 2024; docs/algorithms.md §1), inference (hard decisions).

Decisions come from repurposed channels, with no new parameters (docs/algorithms.md §1.1). The released code and
checkpoints use the **last** channel D-1 of the pre-RoPE projections, not the paper's first channel,
and so does this module:
- alpha_t = 1[k_t[D-1] - c > 0] per KV head (c = init value 5): token t merges into the open slot;
  the first token always appends (alpha_0 = 0);
- omega_t = sigmoid(mean over the group's query heads of q_t[D-1] + c) + eps: its weight in the slot.
Both channels are then zeroed for attention, before and after RoPE (the reference rotary kernel zeroes
the last channel of its output); the softmax scale stays 1/sqrt(D).

A slot holds the weighted mean of the last <= W tokens of its group (W = window, 0 = the whole group)
(docs/algorithms.md §1.2), for keys (pre-RoPE, then rotated at the position of the group's newest token) and values.

Decode state per layer, per (batch row, KV head): "k", "v" (B, Hkv, T, D) slots; "slots" (B, Hkv) the
number of slots in use; "ksum", "vsum" (B, Hkv, D), "z" (B, Hkv) the open slot's weighted sums and
weight; "glen" (B, Hkv) its group length; "ring_k", "ring_v" (B, Hkv, W, D) and "ring_z" (B, Hkv, W)
the weighted inputs of the last W tokens, indexed by position % W. Sums are kept in fp32.

The two cache regions are ops (zoo/ops): the one-shot prefill cache build (zoo::dmc_prefill_cache) and
the decode step's decisions, state update and ragged attention (zoo::dmc_decode_attention); both return
fresh tensors that this module writes into the state (the new slot with an index_put).
"""

import torch

from zoo.nn.attention import SelfAttention
from zoo.nn.rope import apply_rope
from zoo.ops.dmc_decode_attention import STATE_OUTPUTS as DECODE_STATE_OUTPUTS
from zoo.ops.dmc_decode_attention import dmc_decode_attention
from zoo.ops.dmc_decode_attention.reference import zero_last_channel
from zoo.ops.dmc_prefill_cache import OUTPUTS as PREFILL_OUTPUTS
from zoo.ops.dmc_prefill_cache import dmc_prefill_cache

EVAL_MASK = -50000.0  # the reference's additive mask for slots closed by a merge (docs/algorithms.md §1.3)
GUMBEL_TEMPERATURE = 0.1  # dmc_temp


def decisions(q: torch.Tensor, k: torch.Tensor, init_val: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-RoPE q (B, H, L, D), k (B, Hkv, L, D) -> (decision logits a (B, Hkv, L), omega (B, Hkv, L)).

    alpha = 1[a > 0]; omega = sigmoid(mean_group q[..., D-1] + init_val) + eps (docs/algorithms.md §1.1)."""
    B, H, L, _ = q.shape
    Hkv = k.shape[1]
    logits = k[..., -1].float() - init_val
    q_group_mean = q[..., -1].float().view(B, Hkv, H // Hkv, L).mean(dim=2)
    omega = torch.sigmoid(q_group_mean + init_val) + torch.finfo(q.dtype).eps
    return logits, omega


def group_starts(alpha: torch.Tensor) -> torch.Tensor:
    """Index of the first token of each position's group: the last j <= i with alpha_j = 0. (..., L)."""
    index = torch.arange(alpha.shape[-1], device=alpha.device).expand_as(alpha)
    return torch.where(alpha == 0, index, torch.zeros_like(index)).cummax(dim=-1).values


def window_starts(alpha: torch.Tensor, window: int) -> torch.Tensor:
    """First token of each position's window: its group start, and at most window - 1 tokens back."""
    starts = group_starts(alpha)
    if window > 0:
        index = torch.arange(alpha.shape[-1], device=alpha.device)
        starts = torch.maximum(starts, index - window + 1)
    return starts


def partial_accumulation(x: torch.Tensor, alpha: torch.Tensor, omega: torch.Tensor, window: int):
    """Every position's open-slot sums with hard decisions (docs/algorithms.md §1.3): acc_i = sum over s in i's window
    of omega_s x_s, weight_i = sum of omega_s. x: (B, Hkv, L, C); alpha, omega: (B, Hkv, L).

    Window sums are differences of fp64 cumulative sums, so they are exact to fp32 precision."""
    lo = window_starts(alpha, window)
    weighted = torch.cat([omega[..., None], x.float() * omega[..., None]], dim=-1).double()
    sums = torch.nn.functional.pad(weighted.cumsum(dim=2), (0, 0, 1, 0))  # sums[j] = sum over s < j
    before = sums.gather(2, lo[..., None].expand(-1, -1, -1, sums.shape[-1]))
    window_sum = (sums[:, :, 1:] - before).float()
    return window_sum[..., 1:], window_sum[..., 0]


def next_position(t: torch.Tensor) -> torch.Tensor:
    """t_{j+1} at j along the last axis, 0 at the last position. A gather, not a slice of L - 1 positions:
    slices of the symbolic length put guards on it under torch.export."""
    L = t.shape[-1]
    index = torch.arange(L, device=t.device)
    shifted = t.gather(-1, (index + 1).clamp(max=L - 1).expand_as(t))
    return shifted * (index < L - 1)


def gumbel_sigmoid(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """sigmoid((logits + g1 - g2) / temperature), g1, g2 ~ Gumbel(0, 1) drawn in fp32 (docs/algorithms.md §1.1)."""
    u1, u2 = torch.rand_like(logits).clamp(1e-10, 1.0), torch.rand_like(logits).clamp(1e-10, 1.0)
    g1, g2 = -torch.log(-torch.log(u1)), -torch.log(-torch.log(u2))
    return torch.sigmoid((logits + g1 - g2) / temperature)


def delayed(t: torch.Tensor, k: int) -> torch.Tensor:
    """t delayed by k positions along dim 2, zeros in front: out[:, :, i] = t[:, :, i - k]."""
    if k == 0:
        return t
    return torch.nn.functional.pad(t[:, :, :-k], [0, 0] * (t.dim() - 3) + [k, 0])


def soft_partial_accumulation(x: torch.Tensor, alpha: torch.Tensor, omega: torch.Tensor, window: int):
    """Training form with soft alpha in [0, 1] (docs/algorithms.md §1.3): acc_i = alpha_i acc_{i-1} +
    omega_i x_i truncated to the last W positions, i.e. acc_i = sum_{d < W} coef(i, d) omega_{i-d} x_{i-d} with
    coef(i, d) = prod_{i-d < r <= i} alpha_r (alpha_0 never enters); the weight c_i likewise. W = 0 sums
    over the whole prefix. With hard alpha this equals partial_accumulation. x: (B, Hkv, L, C)."""
    L = x.shape[2]
    span = min(window if window > 0 else L, L)
    terms = torch.cat([omega[..., None], x.float() * omega[..., None]], dim=-1)  # (B, Hkv, L, 1 + C)
    total, coef = terms, torch.ones_like(alpha)
    for d in range(1, span):
        coef = coef * delayed(alpha, d - 1)
        total = total + coef[..., None] * delayed(terms, d)
    return total[..., 1:], total[..., 0]


class DMCAttention(SelfAttention):
    """Self-attention whose KV cache is compressed by DMC. Same projections as SelfAttention.

    merge_period: a benchmark control, None in normal use (DMCConfig.dmc_merge_period): when P, the decision
    of position t is "append" iff t % P == 0 (compression ratio P exactly), whatever the channel says."""

    state_names = ("k", "v", "slots", "ksum", "vsum", "z", "glen", "ring_k", "ring_v", "ring_z")

    def __init__(self, *args, init_val: float = 5.0, window: int = 12, merge_period: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if merge_period is not None and merge_period < 1:
            raise ValueError(f"merge_period must be None or >= 1, got {merge_period}")
        self.init_val, self.window, self.merge_period = init_val, window, merge_period

    def hard_decisions(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """alpha in {0, 1} for positions (broadcast to logits' shape); the first token always appends."""
        if self.merge_period is not None:
            alpha = (positions % self.merge_period != 0).float().expand_as(logits)
        else:
            alpha = (logits > 0).float()
        return alpha * (positions > 0)

    def state_shapes(self, batch: int, max_len: int):
        B, Hkv, D, W = batch, self.n_kv_heads, self.head_dim, self.window
        f32 = torch.float32
        return {
            "k": ((B, Hkv, max_len, D), None),
            "v": ((B, Hkv, max_len, D), None),
            "slots": ((B, Hkv), torch.int64),
            "ksum": ((B, Hkv, D), f32),
            "vsum": ((B, Hkv, D), f32),
            "z": ((B, Hkv), f32),
            "glen": ((B, Hkv), f32),
            "ring_k": ((B, Hkv, W, D), f32),
            "ring_v": ((B, Hkv, W, D), f32),
            "ring_z": ((B, Hkv, W), f32),
        }

    @staticmethod
    def slots_in_use(state: dict) -> torch.Tensor:
        """Slots held by the fullest (row, KV head) of this layer (a 0-d tensor: the caller syncs once)."""
        return state["slots"].max()

    @staticmethod
    def resized(state: dict, capacity: int) -> dict:
        """The slot tensors "k", "v" with room for `capacity` slots per head (>= slots in use), contents kept."""
        resized = {}
        for name in ("k", "v"):
            old = state[name]
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
            kept = min(capacity, old.shape[2])
            new[:, :, :kept] = old[:, :, :kept]
            resized[name] = new
        return resized

    def rotate(self, t: torch.Tensor, rope) -> torch.Tensor:
        """RoPE with channel D-1 zeroed on the way in and out (docs/algorithms.md §1.1)."""
        t = zero_last_channel(t)
        return zero_last_channel(apply_rope(t, *rope)) if rope is not None else t

    def forward(self, x: torch.Tensor, rope, state: dict | None = None, lengths=None) -> torch.Tensor:
        """The full-sequence forward (forward_with_decisions without the decisions)."""
        return self.forward_with_decisions(x, rope, state, lengths)[0]

    def forward_with_decisions(self, x: torch.Tensor, rope, state: dict | None = None, lengths=None):
        """The full-sequence forward (docs/algorithms.md §1.3) and each row's mean hard decision (B,) over heads and the
        positions after the first: the decisions the DMC loss counts, straight-through in training.

        In eval mode: hard decisions, partial accumulations and the -50000 mask; with `state`, also the
        compressed cache at each row's `lengths` (one-shot prefill, zoo::dmc_prefill_cache). In training
        mode: Gumbel-sigmoid decisions (temperature 0.1), soft accumulations and the mask log(1 - alpha_{j+1})."""
        B, L, _ = x.shape
        q, k, v = self.project(x, rope=None)  # pre-RoPE: decisions read them
        logits, omega = decisions(q, k, self.init_val)
        kv = torch.cat([zero_last_channel(k), v], dim=-1)
        if self.training:
            alpha = gumbel_sigmoid(logits, GUMBEL_TEMPERATURE)
            acc, weight = soft_partial_accumulation(kv, alpha, omega, self.window)
            closed = torch.log1p(-next_position(alpha).clamp(max=1 - 1e-6))  # key j closed by alpha_{j+1}
        else:
            alpha = self.hard_decisions(logits, torch.arange(L, device=x.device))
            acc, weight = partial_accumulation(kv, alpha, omega, self.window)
            closed = EVAL_MASK * next_position(alpha)
        hard = alpha if not self.training else (alpha > 0.5).float() + alpha - alpha.detach()
        after_first = (torch.arange(L, device=x.device) > 0).float()  # alpha_0 does not count
        mean_decision = (hard * after_first).sum(dim=(1, 2)) / (self.n_kv_heads * (L - 1))
        pooled = (acc / weight[..., None]).to(x.dtype)
        k_slot, v_slot = self.rotate(pooled[..., : self.head_dim], rope), pooled[..., self.head_dim :]
        # query i sees its own partial state, and state j < i while token j+1 did not merge into it
        bias = closed[:, :, None, :].expand(B, -1, L, L)
        diagonal = torch.eye(L, dtype=torch.bool, device=x.device)
        future = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=1)
        bias = bias.masked_fill(diagonal, 0.0).masked_fill(future, float("-inf"))
        G = self.n_heads // self.n_kv_heads
        qg = self.rotate(q, rope).view(B, self.n_kv_heads, G, L, self.head_dim)
        scores = (qg @ k_slot[:, :, None].transpose(-1, -2)).float() * self.scale + bias[:, :, None]
        out = scores.softmax(dim=-1).to(v_slot.dtype) @ v_slot[:, :, None]
        if state is not None:
            self.build_cache(state, lengths, alpha, omega, kv, acc, weight, k_slot, v_slot)
        return self.output(out.reshape(B, self.n_heads, L, self.head_dim)), mean_decision

    def build_cache(self, state, lengths, alpha, omega, kv, acc, weight, k_slot, v_slot):
        """The compressed cache after each row's last prompt token, from the full-sequence pass
        (docs/algorithms.md §1.4, one-shot), written into `state`. The cache must hold the whole prompt
        (T >= L), as the engine allocates it: no overflow check here, so that the region captures without a
        host sync."""
        capacity = state["k"].shape[2]
        built = dmc_prefill_cache(alpha, omega, kv, acc, weight, k_slot, v_slot, lengths, capacity, self.window)
        for name, value in zip(PREFILL_OUTPUTS, built):
            state[name].copy_(value)

    def decode(self, x: torch.Tensor, positions: torch.Tensor, rope, state: dict) -> torch.Tensor:
        """One token per row at `positions` (B,): update the open slot or open a new one, per KV head
        (docs/algorithms.md §1.2), then attend to each head's slots, in one op (zoo::dmc_decode_attention); the new or
        merged slot is written into the cache at index slots-1."""
        B = x.shape[0]
        q, k, v = self.project(x, rope=None)  # pre-RoPE: the op reads the decisions from them
        if rope is not None:
            cos, sin = rope[0][:, 0, 0], rope[1][:, 0, 0]  # (B, D)
        else:
            cos = torch.ones(B, self.head_dim, dtype=x.dtype, device=x.device)
            sin = torch.zeros_like(cos)
        small = [state[name] for name in DECODE_STATE_OUTPUTS]
        out, new_k, new_v, *updated = dmc_decode_attention(
            q[:, :, 0], k[:, :, 0], v[:, :, 0], cos, sin, positions, state["k"], state["v"], *small,
            self.init_val, self.window, self.scale, self.merge_period or 0,
        )  # fmt: skip
        for name, value in zip(DECODE_STATE_OUTPUTS, updated):
            state[name].copy_(value)
        # index_put into the slot each head writes (its open slot), in place also under torch.compile
        rows, heads = torch.arange(B, device=x.device)[:, None], torch.arange(self.n_kv_heads, device=x.device)
        state["k"][rows, heads, updated[0] - 1] = new_k
        state["v"][rows, heads, updated[0] - 1] = new_v
        return self.output(out[:, :, None])


def compression_ratios(state: dict, positions: torch.Tensor, n_layers: int) -> dict:
    """Tokens seen over slots kept, per layer and overall. positions: (B,), the next position per row."""
    head_tokens = positions.sum().item() * state["slots0"].shape[1]  # every KV head sees every token
    layer_slots = [state[f"slots{i}"].sum().item() for i in range(n_layers)]
    per_layer = [head_tokens / slots for slots in layer_slots]
    return {"per_layer": per_layer, "overall": head_tokens * n_layers / sum(layer_slots)}
