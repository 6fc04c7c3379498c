"""The pre-norm decoder-only transformer that the Llama and GPT families (and later families) configure.

Every decoder model of the zoo exposes the same three entry points, which later issues capture, fuse and
export:
- `forward(input_ids)` -> logits (B, L, V): the full causal forward, the oracle of every cached path;
- `prefill(input_ids, lengths, state)` -> (logits at each row's last prompt token (B, V), state);
- `decode_step(tokens, positions, state)` -> (logits (B, V), state): one token per row at its own position.
`state` is a dict of tensors made by `init_state`; here {"k0", "v0", "k1", "v1", ...}, one (B, Hkv, T, D)
pair per layer. Separate tensors, not one stacked (layers, ...) tensor: a compiled step that writes into
views of one stacked input copies the whole cache once per layer, while writes into whole inputs are
done in place (figures in docs/architecture.md).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import DTYPE_BYTES, ModelConfig
from zoo.nn.attention import SelfAttention
from zoo.nn.mlp import MLP, GatedMLP
from zoo.nn.norms import make_norm
from zoo.nn.rope import RotaryEmbedding
from zoo.nn.state import StateEntry, allocate_state, layer_view, state_spec


@dataclass
class DecoderConfig(ModelConfig):
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None  # None: multi-head attention (n_heads)
    head_dim: int | None = None  # None: d_model // n_heads
    max_seq_len: int = 2048
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-6
    mlp: str = "gated"  # "gated" (SwiGLU-style) | "plain" | "moe" (MoEConfig)
    attention: str = "standard"  # "standard" | "dmc" (DMCConfig)
    activation: str = "silu"
    position: str = "rope"  # "rope" | "learned" | "none"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # HF rope_parameters without rope_theta, e.g. {"rope_type": "llama3", ...}
    tie_embeddings: bool = False
    attention_bias: bool = False  # biases on q, k, v and o
    qkv_bias: bool = False  # biases on q, k, v only (Qwen2)
    mlp_bias: bool = False
    init_std: float = 0.02

    family: ClassVar[str] = "decoder"

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    def num_params(self) -> int:
        d, H, Hkv, D = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * H * D * 2 + d * Hkv * D * 2
        if self.attention_bias or self.qkv_bias:
            attn += H * D + 2 * Hkv * D
        if self.attention_bias:
            attn += d
        norm = d * (2 if self.norm == "layer" else 1)
        per_layer = attn + self.mlp_params() + 2 * norm
        total = self.n_layers * per_layer + norm + self.vocab_size * d
        if not self.tie_embeddings:
            total += self.vocab_size * d
        if self.position == "learned":
            total += self.max_seq_len * d
        return total

    def mlp_params(self) -> int:
        mats = 3 if self.mlp == "gated" else 2
        return mats * self.d_model * self.d_ff + (((mats - 1) * self.d_ff + self.d_model) if self.mlp_bias else 0)

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        """KV-cache bytes one token adds, over all layers (keys and values)."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * DTYPE_BYTES[dtype]

    def lookup_params(self) -> int:
        learned_positions = self.max_seq_len * self.d_model if self.position == "learned" else 0
        return super().lookup_params() + learned_positions

    def mixer_flops_per_token(self, context: float) -> float:
        return 4 * context * self.n_heads * self.head_dim * self.n_layers  # q.k and p.v over the cache


def make_mlp(c: DecoderConfig) -> nn.Module:
    """The feed-forward sublayer a config asks for: "gated" (SwiGLU), "plain", or "moe" (zoo/nn/moe.py)."""
    if c.mlp == "moe":
        from zoo.nn.moe import MoE

        return MoE.from_config(c)
    mlp_cls = {"gated": GatedMLP, "plain": MLP}[c.mlp]
    return mlp_cls(c.d_model, c.d_ff, act=c.activation, bias=c.mlp_bias)


def make_attention(c: DecoderConfig) -> nn.Module:
    """The attention sublayer a config asks for: standard, or with a DMC-compressed cache (zoo/nn/dmc.py)."""
    kwargs = dict(bias=c.attention_bias, qkv_bias=c.attention_bias or c.qkv_bias)
    if c.attention == "dmc":
        from zoo.nn.dmc import DMCAttention

        return DMCAttention(
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            init_val=c.dmc_init_val,
            window=c.dmc_window,
            merge_period=c.dmc_merge_period,
            **kwargs,
        )
    return SelfAttention(c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, **kwargs)


class DecoderBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = config
        self.attn_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.attn = make_attention(c)
        self.mlp_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.mlp = make_mlp(c)

    def forward(self, x, rope, state=None, lengths=None):
        x = x + self.attn(self.attn_norm(x), rope, state, lengths)
        return x + self.mlp(self.mlp_norm(x))

    def decode(self, x, positions, rope, state):
        x = x + self.attn.decode(self.attn_norm(x), positions, rope, state)
        return x + self.mlp(self.mlp_norm(x))


def init_normal(module: nn.Module, std: float) -> bool:
    """A Linear's or Embedding's weight ~ N(0, std) and its bias 0 (True); any other module is left (False)."""
    if not isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    nn.init.normal_(module.weight, std=std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return True


def init_submodules(model: nn.Module, std: float) -> None:
    """Every Linear and Embedding of `model` by init_normal; every other submodule by its own
    reset_parameters (norm weights 1)."""
    for module in model.modules():
        if not init_normal(module, std) and module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


class DecoderLM(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_embed = nn.Embedding(c.max_seq_len, c.d_model) if c.position == "learned" else None
        self.rotary = RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling) if c.position == "rope" else None
        self.layers = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_layers))
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps)
        # Tied embeddings reuse embed.weight in `logits`, so the state dict holds the matrix once.
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        """Linear and embedding weights ~ N(0, init_std), biases 0, norm weights 1."""
        init_submodules(self, self.config.init_std)

    def embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        return x

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        return None if self.rotary is None else self.rotary(positions, dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device).expand(B, L)
        x = self.embed_tokens(input_ids, positions)
        rope = self.rope(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope)
        return self.logits(x)

    def stateful_layers(self):
        """(layer index, the module that declares its decode state) for every layer with state."""
        return [(i, layer.attn) for i, layer in enumerate(self.layers)]

    def state_spec(self) -> list[StateEntry]:
        return state_spec(self.stateful_layers())

    def init_state(self, batch: int, max_len: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
        param = next(self.parameters())
        return allocate_state(self.state_spec(), batch, max_len, dtype or param.dtype, device or param.device)

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """input_ids: (B, L) right-padded; lengths: (B,) real prompt lengths. Returns logits at lengths-1."""
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device).expand(B, L)
        x = self.embed_tokens(input_ids, positions)
        rope = self.rope(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, layer_view(state, layer.attn.state_names, i), lengths)
        last = x[torch.arange(B, device=x.device), lengths - 1]
        return self.logits(last), state

    @property
    def compressed_cache(self) -> bool:
        """Whether the cache holds fewer slots than tokens (DMC): its slot capacity then follows the slots in
        use (cache_slots, resize_cache) instead of the token count."""
        return self.config.attention == "dmc"

    def cache_slots(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        """A compressed cache's (slots held by its fullest head over all layers, slot capacity per head)."""
        views = (layer_view(state, layer.attn.state_names, i) for i, layer in enumerate(self.layers))
        used = torch.stack([layer.attn.slots_in_use(view) for layer, view in zip(self.layers, views)]).max()
        return int(used), state["k0"].shape[2]  # one device sync per call: the engine asks every step

    def resize_cache(self, state: dict[str, torch.Tensor], capacity: int) -> dict[str, torch.Tensor]:
        """A compressed cache with room for `capacity` slots per head (at least cache_slots' used)."""
        for i, layer in enumerate(self.layers):
            resized = layer.attn.resized(layer_view(state, layer.attn.state_names, i), capacity)
            state.update({f"{name}{i}": tensor for name, tensor in resized.items()})
        return state

    def state_summary(self, state: dict[str, torch.Tensor], cached_tokens: torch.Tensor) -> dict:
        """What the decode state reached for rows holding `cached_tokens` (B,) tokens: with DMC, the
        compression ratio per layer and overall (tokens over slots kept)."""
        if self.config.attention != "dmc":
            return {}
        from zoo.nn.dmc import compression_ratios

        return {"compression": compression_ratios(state, cached_tokens, self.config.n_layers)}

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """tokens, positions: (B,). Token b sits at positions[b]; returns its next-token logits (B, V)."""
        x = self.embed_tokens(tokens[:, None], positions[:, None])
        rope = self.rope(positions[:, None], x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer.decode(x, positions, rope, layer_view(state, layer.attn.state_names, i))
        return self.logits(x[:, 0]), state
