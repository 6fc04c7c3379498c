"""MoE family: the Llama decoder with every MLP replaced by a mixture of experts (zoo/nn/moe.py).

Naming of upcycled configurations (docs/algorithms.md §3.1): a dense FFN of width F split with granularity G gives
experts of width F / G; E full copies give N = E * G experts; T = top-K. "E8G8T16" is N=64, K=16.
"""

from dataclasses import dataclass
from typing import ClassVar

from zoo.models.llama.config import LlamaConfig


@dataclass
class MoEConfig(LlamaConfig):
    mlp: str = "moe"
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 0  # expert FFN width (F / G when upcycled)
    routing: str = "softmax-topk"  # "softmax-topk" | "topk-softmax"
    expert_mlp: str = "gated"  # "gated" (SwiGLU with `activation`) | "plain" (e.g. squared ReLU)
    shared_d_ff: int = 0  # width of an always-on shared expert (0: none)
    shared_gate: bool = False  # scale the shared expert by sigmoid(w . x) (Qwen2-MoE)
    family: ClassVar[str] = "moe"

    def __post_init__(self):
        super().__post_init__()
        if self.mlp != "moe" or self.d_expert < 1:
            raise ValueError("an MoE config needs mlp='moe' and d_expert >= 1")

    def mlp_params(self) -> int:
        d, F = self.d_model, self.d_expert
        experts = self.n_experts * (3 if self.expert_mlp == "gated" else 2) * d * F
        shared = (3 if self.expert_mlp == "gated" else 2) * d * self.shared_d_ff + (d if self.shared_gate else 0)
        return self.n_experts * d + experts + shared  # router + experts + shared expert

    def active_params(self) -> int:
        """Parameters one token uses (its top-K experts instead of all N)."""
        per_expert = (3 if self.expert_mlp == "gated" else 2) * self.d_model * self.d_expert
        return self.num_params() - self.n_layers * (self.n_experts - self.top_k) * per_expert


def nemotron4_15b_upcycled(n_experts: int, granularity: int, top_k: int) -> MoEConfig:
    """Nemotron-4 15B (32 layers, hidden 6144, 48 heads / 8 KV, squared-ReLU MLP of 24576, vocab 256000)
    upcycled with softmax-then-top-K routing, as in the upcycling paper."""
    return MoEConfig(
        vocab_size=256000,
        d_model=6144,
        n_layers=32,
        n_heads=48,
        n_kv_heads=8,
        d_ff=24576,
        max_seq_len=4096,
        norm="layer",
        activation="relu2",
        expert_mlp="plain",
        n_experts=n_experts,
        top_k=top_k,
        d_expert=24576 // granularity,
        routing="softmax-topk",
    )


SIZES = {
    "moe-tiny": MoEConfig(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        max_seq_len=256,
        n_experts=8,
        top_k=2,
        d_expert=32,
    ),
    "mixtral-8x7b": MoEConfig(
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=32768,
        rope_theta=1e6,
        n_experts=8,
        top_k=2,
        d_expert=14336,
        routing="topk-softmax",
    ),
    # Qwen1.5-MoE-A2.7B: 60 experts of 1408, top-4 without renormalisation, a gated shared expert of 5632
    "qwen2-moe-a2.7b": MoEConfig(
        vocab_size=151936,
        d_model=2048,
        n_layers=24,
        n_heads=16,
        d_ff=5632,
        max_seq_len=8192,
        norm_eps=1e-6,
        rope_theta=1e6,
        qkv_bias=True,
        n_experts=60,
        top_k=4,
        d_expert=1408,
        routing="softmax-topk",
        shared_d_ff=5632,
        shared_gate=True,
    ),
    "nemotron4-15b-e8g1t2": nemotron4_15b_upcycled(8, 1, 2),
    "nemotron4-15b-e8g8t16": nemotron4_15b_upcycled(64, 8, 16),
}
