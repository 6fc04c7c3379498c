"""GPT family (GPT-2 / Megatron-LM GPT): LayerNorm, GeLU MLP, learned positions, tied embeddings, biases."""

from dataclasses import dataclass
from typing import ClassVar

from zoo.nn.transformer import DecoderConfig


@dataclass
class GPTConfig(DecoderConfig):
    max_seq_len: int = 1024
    norm: str = "layer"
    norm_eps: float = 1e-5
    mlp: str = "plain"
    activation: str = "gelu_tanh"
    position: str = "learned"
    tie_embeddings: bool = True
    attention_bias: bool = True
    mlp_bias: bool = True
    family: ClassVar[str] = "gpt"


SIZES = {
    "gpt-tiny": GPTConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=128),
    "gpt2-124m": GPTConfig(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    # Megatron-LM's 8.3B model (Shoeybi et al. 2019, Table 1): 72 layers, hidden 3072, 32 heads, vocab
    # 50257 padded to 51200, sequence 1024. Megatron's GeLU of that era is the tanh approximation.
    "megatron-gpt-8.3b": GPTConfig(vocab_size=51200, d_model=3072, n_layers=72, n_heads=32, d_ff=12288),
}
