"""Feed-forward blocks: gated (SwiGLU / GEGLU) and plain two-layer MLPs."""

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,  # exact (erf) GeLU
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),  # squared ReLU (Nemotron, Primer)
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with act = silu."""

    def __init__(self, d_model: int, d_ff: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.act_name = act
        self.act = activation(act)
        self.w_gate = nn.Linear(d_model, d_ff, bias=bias)
        self.w_up = nn.Linear(d_model, d_ff, bias=bias)
        self.w_down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(self.act(self.w_gate(x)) * self.w_up(x))


class MLP(nn.Module):
    """down(act(up(x))): the GPT / Megatron MLP."""

    def __init__(self, d_model: int, d_ff: int, act: str = "gelu_tanh", bias: bool = True):
        super().__init__()
        self.act_name = act
        self.act = activation(act)
        self.w_up = nn.Linear(d_model, d_ff, bias=bias)
        self.w_down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(self.act(self.w_up(x)))
