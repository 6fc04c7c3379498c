"""Dynamic Memory Compression attention (Nawrot et al. 2024; SPECS section 1), inference (hard decisions).

Decisions come from repurposed channels, with no new parameters (SPECS 1.1). The released code and
checkpoints use the **last** channel D-1 of the pre-RoPE projections, not the paper's first channel,
and so does this module:
- alpha_t = 1[k_t[D-1] - c > 0] per KV head (c = init value 5): token t merges into the open slot;
  the first token always appends (alpha_0 = 0);
- omega_t = sigmoid(mean over the group's query heads of q_t[D-1] + c) + eps: its weight in the slot.
Both channels are then zeroed for attention, before and after RoPE (the reference rotary kernel zeroes
the last channel of its output); the softmax scale stays 1/sqrt(D).

A slot holds the weighted mean of the last <= W tokens of its group (W = window, 0 = the whole group)
(SPECS 1.2), for keys (pre-RoPE, then rotated at the position of the group's newest token) and values.

Decode state per layer, per (batch row, KV head): "k", "v" (B, Hkv, T, D) slots; "slots" (B, Hkv) the
number of slots in use; "ksum", "vsum" (B, Hkv, D), "z" (B, Hkv) the open slot's weighted sums and
weight; "glen" (B, Hkv) its group length; "ring_k", "ring_v" (B, Hkv, W, D) and "ring_z" (B, Hkv, W)
the weighted inputs of the last W tokens, indexed by position % W. Sums are kept in fp32.
"""

import torch

from zoo.nn.attention import SelfAttention, cached_attention
from zoo.nn.rope import apply_rope

EVAL_MASK = -50000.0  # the reference's additive mask for slots closed by a merge (SPECS 1.3)
GUMBEL_TEMPERATURE = 0.1  # dmc_temp


def decisions(q: torch.Tensor, k: torch.Tensor, init_val: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-RoPE q (B, H, L, D), k (B, Hkv, L, D) -> (decision logits a (B, Hkv, L), omega (B, Hkv, L)).

    alpha = 1[a > 0]; omega = sigmoid(mean_group q[..., D-1] + init_val) + eps (SPECS 1.1)."""
    B, H, L, _ = q.shape
    Hkv = k.shape[1]
    logits = k[..., -1].float() - init_val
    q_group_mean = q[..., -1].float().view(B, Hkv, H // Hkv, L).mean(dim=2)
    omega = torch.sigmoid(q_group_mean + init_val) + torch.finfo(q.dtype).eps
    return logits, omega


def zero_last_channel(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[..., :-1], torch.zeros_like(x[..., -1:])], dim=-1)


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
    """Every position's open-slot sums with hard decisions (SPECS 1.3): acc_i = sum over s in i's window
    of omega_s x_s, weight_i = sum of omega_s. x: (B, Hkv, L, C); alpha, omega: (B, Hkv, L).

    Window sums are differences of fp64 cumulative sums, so they are exact to fp32 precision."""
    lo = window_starts(alpha, window)
    weighted = torch.cat([omega[..., None], x.float() * omega[..., None]], dim=-1).double()
    sums = torch.nn.functional.pad(weighted.cumsum(dim=2), (0, 0, 1, 0))  # sums[j] = sum over s < j
    before = sums.gather(2, lo[..., None].expand(-1, -1, -1, sums.shape[-1]))
    window_sum = (sums[:, :, 1:] - before).float()
    return window_sum[..., 1:], window_sum[..., 0]


def gumbel_sigmoid(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """sigmoid((logits + g1 - g2) / temperature), g1, g2 ~ Gumbel(0, 1) drawn in fp32 (SPECS 1.1)."""
    u1, u2 = torch.rand_like(logits).clamp(1e-10, 1.0), torch.rand_like(logits).clamp(1e-10, 1.0)
    g1, g2 = -torch.log(-torch.log(u1)), -torch.log(-torch.log(u2))
    return torch.sigmoid((logits + g1 - g2) / temperature)


def delayed(t: torch.Tensor, k: int) -> torch.Tensor:
    """t delayed by k positions along dim 2, zeros in front: out[:, :, i] = t[:, :, i - k]."""
    if k == 0:
        return t
    return torch.nn.functional.pad(t[:, :, :-k], [0, 0] * (t.dim() - 3) + [k, 0])


def soft_partial_accumulation(x: torch.Tensor, alpha: torch.Tensor, omega: torch.Tensor, window: int):
    """Training form with soft alpha in [0, 1] (SPECS 1.3): acc_i = alpha_i acc_{i-1} + omega_i x_i truncated
    to the last W positions, i.e. acc_i = sum_{d < W} coef(i, d) omega_{i-d} x_{i-d} with
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
    """Self-attention whose KV cache is compressed by DMC. Same projections as SelfAttention."""

    state_names = ("k", "v", "slots", "ksum", "vsum", "z", "glen", "ring_k", "ring_v", "ring_z")

    def __init__(self, *args, init_val: float = 5.0, window: int = 12, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_val, self.window = init_val, window
        # Benchmark control, None in normal use: when P, the decision of position t is "append" iff t % P
        # == 0 (compression ratio P exactly), whatever the decision channel says.
        self.merge_period: int | None = None

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
        """RoPE with channel D-1 zeroed on the way in and out (SPECS 1.1)."""
        t = zero_last_channel(t)
        return zero_last_channel(apply_rope(t, *rope)) if rope is not None else t

    def forward(self, x: torch.Tensor, rope, state: dict | None = None, lengths=None) -> torch.Tensor:
        """The full-sequence forward (SPECS 1.3). In eval mode: hard decisions, partial accumulations and
        the -50000 mask; with `state`, also the compressed cache at each row's `lengths` (one-shot
        prefill). In training mode: Gumbel-sigmoid decisions (temperature 0.1), soft accumulations and
        the mask log(1 - alpha_{j+1}). Either way self.mean_decision holds each row's mean hard decision (B,),
        straight-through in training (the decisions the DMC loss counts, SPECS 1.3)."""
        B, L, _ = x.shape
        q, k, v = self.project(x, rope=None)  # pre-RoPE: decisions read them
        logits, omega = decisions(q, k, self.init_val)
        kv = torch.cat([zero_last_channel(k), v], dim=-1)
        if self.training:
            alpha = gumbel_sigmoid(logits, GUMBEL_TEMPERATURE)
            acc, weight = soft_partial_accumulation(kv, alpha, omega, self.window)
            closed = torch.log1p(-alpha[..., 1:].clamp(max=1 - 1e-6))  # (B, Hkv, L-1): key j from alpha_{j+1}
        else:
            alpha = self.hard_decisions(logits, torch.arange(L, device=x.device))
            acc, weight = partial_accumulation(kv, alpha, omega, self.window)
            closed = EVAL_MASK * alpha[..., 1:]
        hard = alpha if not self.training else (alpha > 0.5).float() + alpha - alpha.detach()
        self.mean_decision = hard[..., 1:].mean(dim=(1, 2))
        pooled = (acc / weight[..., None]).to(x.dtype)
        k_slot, v_slot = self.rotate(pooled[..., : self.head_dim], rope), pooled[..., self.head_dim :]
        # query i sees its own partial state, and state j < i while token j+1 did not merge into it
        bias = torch.cat([closed, torch.zeros_like(alpha[..., :1])], dim=-1)[:, :, None, :].expand(B, -1, L, L)
        diagonal = torch.eye(L, dtype=torch.bool, device=x.device)
        future = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=1)
        bias = bias.masked_fill(diagonal, 0.0).masked_fill(future, float("-inf"))
        G = self.n_heads // self.n_kv_heads
        qg = self.rotate(q, rope).view(B, self.n_kv_heads, G, L, self.head_dim)
        scores = (qg @ k_slot[:, :, None].transpose(-1, -2)).float() * self.scale + bias[:, :, None]
        out = scores.softmax(dim=-1).to(v_slot.dtype) @ v_slot[:, :, None]
        if state is not None:
            self.build_cache(state, lengths, alpha, omega, kv, acc, weight, k_slot, v_slot)
        return self.output(out.reshape(B, self.n_heads, L, self.head_dim))

    @torch.no_grad()
    def build_cache(self, state, lengths, alpha, omega, kv, acc, weight, k_slot, v_slot):
        """The compressed cache after each row's last prompt token, from the full-sequence pass: slot j is
        kept when token j+1 did not merge into it, or j is the row's last token (SPECS 1.4, one-shot)."""
        B, Hkv, L = alpha.shape
        T, D = state["k"].shape[2], self.head_dim
        index = torch.arange(L, device=alpha.device)
        last = (lengths - 1)[:, None, None]  # (B, 1, 1)
        next_appends = torch.cat([alpha[..., 1:] == 0, torch.ones_like(alpha[..., :1], dtype=torch.bool)], dim=-1)
        keep = (index <= last) & (next_appends | (index == last))
        kept = keep.sum(-1)
        if int(kept.max()) > T:
            raise ValueError(f"the prompt needs {int(kept.max())} cache slots in a head; the cache holds {T}")
        # the kept positions of each head first, in order (a stable sort), then gathered into slots 0..
        n = min(T, L)
        order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices[..., :n, None].expand(-1, -1, -1, D)
        state["k"][:, :, :n] = k_slot.gather(2, order)
        state["v"][:, :, :n] = v_slot.gather(2, order)
        state["slots"].copy_(kept)
        # the open slot's running state at the last prompt token
        at_last = last.expand(B, Hkv, 1)
        state["ksum"].copy_(acc[..., :D].gather(2, at_last[..., None].expand(-1, -1, -1, D))[:, :, 0])
        state["vsum"].copy_(acc[..., D:].gather(2, at_last[..., None].expand(-1, -1, -1, D))[:, :, 0])
        state["z"].copy_(weight.gather(2, at_last)[..., 0])
        start = group_starts(alpha).gather(2, at_last)[..., 0]
        state["glen"].copy_((last[..., 0] - start + 1).float())
        # ring buffer: the weighted inputs of the trailing group's last W tokens, at position % W
        for back in range(self.window):
            s = (last[..., 0] - back).expand(B, Hkv)
            valid = (s >= start) & (s >= 0)
            s = s.clamp(min=0)
            w = omega.gather(2, s[..., None])[..., 0]
            x = kv.float().gather(2, s[..., None, None].expand(-1, -1, 1, 2 * D))[:, :, 0] * w[..., None]
            slot = (s % self.window)[..., None]
            for name, value in (("ring_k", x[..., :D]), ("ring_v", x[..., D:])):
                old = state[name].gather(2, slot[..., None].expand(-1, -1, 1, D))[:, :, 0]
                new = torch.where(valid[..., None], value, old)
                state[name].scatter_(2, slot[..., None].expand(-1, -1, 1, D), new[:, :, None])
            old_z = state["ring_z"].gather(2, slot)[..., 0]
            state["ring_z"].scatter_(2, slot, torch.where(valid, w, old_z)[..., None])

    def decode(self, x: torch.Tensor, positions: torch.Tensor, rope, state: dict) -> torch.Tensor:
        """One token per row at `positions` (B,): update the open slot or open a new one, per KV head
        (SPECS 1.2), then attend to each head's slots."""
        B = x.shape[0]
        D, Hkv = self.head_dim, self.n_kv_heads
        q, k, v = self.project(x, rope=None)  # pre-RoPE: decisions read them
        logits, omega = decisions(q, k, self.init_val)
        alpha = self.hard_decisions(logits[..., 0], positions[:, None])  # (B, Hkv)
        omega = omega[..., 0]
        k_in, v_in = zero_last_channel(k)[:, :, 0].float(), v[:, :, 0].float()
        glen = alpha * state["glen"] + 1
        ksum = alpha[..., None] * state["ksum"] + omega[..., None] * k_in
        vsum = alpha[..., None] * state["vsum"] + omega[..., None] * v_in
        z = alpha * state["z"] + omega
        if self.window > 0:
            # a group longer than W drops the token W steps back, held in the ring at the same index
            slot = (positions % self.window)[:, None, None].expand(B, Hkv, 1)
            overflow = (glen > self.window).float()
            ring_index = slot[..., None].expand(-1, -1, -1, D)
            ksum = ksum - overflow[..., None] * state["ring_k"].gather(2, ring_index)[:, :, 0]
            vsum = vsum - overflow[..., None] * state["ring_v"].gather(2, ring_index)[:, :, 0]
            z = z - overflow * state["ring_z"].gather(2, slot)[..., 0]
            state["ring_k"].scatter_(2, ring_index, (omega[..., None] * k_in)[:, :, None])
            state["ring_v"].scatter_(2, ring_index, (omega[..., None] * v_in)[:, :, None])
            state["ring_z"].scatter_(2, slot, omega[..., None])
        for name, value in (("glen", glen), ("ksum", ksum), ("vsum", vsum), ("z", z)):
            state[name].copy_(value)
        slots = state["slots"] + 1 - alpha.long()
        state["slots"].copy_(slots)
        # index_put into the slot each head writes (its open slot), in place also under torch.compile
        rows, heads = torch.arange(B, device=x.device)[:, None], torch.arange(Hkv, device=x.device)
        state["k"][rows, heads, slots - 1] = self.rotate((ksum / z[..., None]).to(x.dtype)[:, :, None], rope)[:, :, 0]
        state["v"][rows, heads, slots - 1] = (vsum / z[..., None]).to(x.dtype)
        attn = cached_attention(self.rotate(q, rope), state["k"], state["v"], slots - 1, self.scale)
        return self.output(attn)


def compression_ratios(state: dict, positions: torch.Tensor, n_layers: int) -> dict:
    """Tokens seen over slots kept, per layer and overall. positions: (B,), the next position per row."""
    head_tokens = positions.sum().item() * state["slots0"].shape[1]  # every KV head sees every token
    layer_slots = [state[f"slots{i}"].sum().item() for i in range(n_layers)]
    per_layer = [head_tokens / slots for slots in layer_slots]
    return {"per_layer": per_layer, "overall": head_tokens * n_layers / sum(layer_slots)}
