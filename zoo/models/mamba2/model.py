"""The Mamba-2 / hybrid language model: embeddings, a pattern of pre-norm residual sublayers, final norm.

Same entry points as the decoder stack (zoo/nn/transformer.py): forward, init_state, prefill,
decode_step. State keys per layer i: "conv{i}", "ssm{i}" (Mamba-2) or "k{i}", "v{i}" (attention).
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.mamba2.config import Mamba2Config
from zoo.nn.attention import SelfAttention
from zoo.nn.mamba2 import Mamba2Mixer
from zoo.nn.mlp import MLP
from zoo.nn.norms import RMSNorm
from zoo.nn.state import StateEntry, allocate_state, layer_view, state_spec
from zoo.nn.transformer import init_normal


class Sublayer(nn.Module):
    """x + mixer(RMSNorm(x)) for one symbol of the pattern."""

    def __init__(self, kind: str, c: Mamba2Config):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        if kind == "M":
            self.mixer = Mamba2Mixer(
                c.d_model,
                c.mamba_heads,
                c.mamba_head_dim,
                c.d_state,
                c.n_groups,
                c.d_conv,
                c.chunk_size,
                dt_limit=c.dt_limit or (0.0, float("inf")),
                bias=c.proj_bias,
                conv_bias=c.conv_bias,
                norm_eps=c.norm_eps,
            )
        elif kind == "*":
            self.mixer = SelfAttention(c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, bias=c.attention_bias)
        else:
            self.mixer = MLP(c.d_model, c.d_ff, act=c.mlp_activation, bias=c.mlp_bias)


class Mamba2LM(nn.Module):
    def __init__(self, config: Mamba2Config):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Sublayer(kind, c) for kind in c.pattern)
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        """Linear and embedding weights ~ N(0, init_std), biases 0, norms 1, Mamba-2's own init for A, D,
        dt_bias and the conv; out_proj of Mamba layers scaled by 1/sqrt(n_layers) (docs/algorithms.md §2.1)."""
        for module in self.modules():
            if not init_normal(module, self.config.init_std) and isinstance(module, (RMSNorm, Mamba2Mixer)):
                module.reset_parameters()
        with torch.no_grad():
            for layer in self.layers:
                if layer.kind == "M":
                    layer.mixer.out_proj.weight /= self.config.n_layers**0.5

    def stateful_layers(self):
        """(layer index, mixer) for every layer with decode state (MLPs carry none)."""
        return [(i, layer.mixer) for i, layer in enumerate(self.layers) if layer.kind != "-"]

    def state_spec(self) -> list[StateEntry]:
        return state_spec(self.stateful_layers())

    def init_state(self, batch: int, max_len: int, dtype=None, device=None) -> dict[str, torch.Tensor]:
        param = next(self.parameters())
        return allocate_state(self.state_spec(), batch, max_len, dtype or param.dtype, device or param.device)

    def residual_stream(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() if self.config.residual_in_fp32 else x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h.to(self.norm.weight.dtype))
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def run_layers(self, x, lengths=None, state=None):
        """Full-sequence pass; with `state`, also write every layer's decode state (prefill)."""
        for i, layer in enumerate(self.layers):
            h = layer.norm(x.to(layer.norm.weight.dtype))
            layer_state = None if state is None or layer.kind == "-" else layer_view(state, layer.mixer.state_names, i)
            if layer.kind == "M":
                out = layer.mixer(h, lengths, layer_state)
            elif layer.kind == "*":
                out = layer.mixer(h, None, layer_state)
            else:
                out = layer.mixer(h)
            x = self.residual_stream(x) + out
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.logits(self.run_layers(self.embed(input_ids)))

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, state: dict[str, torch.Tensor]):
        """input_ids: (B, L) right-padded; lengths: (B,). Returns logits at lengths-1 and the state."""
        x = self.run_layers(self.embed(input_ids), lengths, state)
        last = x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        return self.logits(last), state

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, state: dict[str, torch.Tensor]):
        """tokens, positions: (B,). Positions index the attention caches; Mamba layers need none."""
        x = self.embed(tokens[:, None])
        for i, layer in enumerate(self.layers):
            h = layer.norm(x.to(layer.norm.weight.dtype))
            if layer.kind == "M":
                out = layer.mixer.decode(h, layer_view(state, layer.mixer.state_names, i))
            elif layer.kind == "*":
                out = layer.mixer.decode(h, positions, None, layer_view(state, layer.mixer.state_names, i))
            else:
                out = layer.mixer(h)
            x = self.residual_stream(x) + out
        return self.logits(x[:, 0]), state
