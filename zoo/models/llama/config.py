"""Llama family: RMSNorm, SwiGLU, RoPE (with HF's scalings), GQA, tied or untied embeddings."""

from dataclasses import dataclass
from typing import ClassVar

from zoo.nn.transformer import DecoderConfig


@dataclass
class LlamaConfig(DecoderConfig):
    norm_eps: float = 1e-5
    family: ClassVar[str] = "llama"


LLAMA3_1_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

SIZES = {
    # tests: GQA (4 query heads over 2 KV heads), untied, small enough for exhaustive checks
    "llama-tiny": LlamaConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160, max_seq_len=256
    ),
    # CPU benchmarks: about 40M parameters
    "llama-small": LlamaConfig(
        vocab_size=32000,
        d_model=512,
        n_layers=8,
        n_heads=8,
        n_kv_heads=4,
        d_ff=1408,
        max_seq_len=2048,
        tie_embeddings=True,
    ),
    "llama2-7b": LlamaConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008, max_seq_len=4096),
    "llama2-13b": LlamaConfig(vocab_size=32000, d_model=5120, n_layers=40, n_heads=40, d_ff=13824, max_seq_len=4096),
    "llama3-8b": LlamaConfig(
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=8192,
        rope_theta=500000.0,
    ),
    "llama3.1-8b": LlamaConfig(
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=131072,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_1_SCALING,
    ),
}
