"""DMC family: Llama-2 style decoders whose attention compresses its KV cache (zoo/nn/dmc.py, §1)."""

from dataclasses import dataclass
from typing import ClassVar

from zoo.models.llama.config import SIZES as LLAMA_SIZES
from zoo.models.llama.config import LlamaConfig


@dataclass
class DMCConfig(LlamaConfig):
    attention: str = "dmc"
    dmc_init_val: float = 5.0  # c: alpha = 1[k[D-1] - c > 0], omega = sigmoid(q[D-1] + c) (dmc_init_val)
    dmc_window: int = 12  # tokens a slot averages over (dmc_window_size); 0: the whole group
    dmc_target_cr: float = 1.0  # the compression ratio the retrofit aimed at (informational)
    # benchmark control, None in normal use: every P-th token opens a slot (CR = P), whatever the channel says
    dmc_merge_period: int | None = None
    family: ClassVar[str] = "dmc"

    def __post_init__(self):
        super().__post_init__()
        if self.attention != "dmc" or self.dmc_window < 0:
            raise ValueError("a DMC config needs attention='dmc' and dmc_window >= 0")
        if self.dmc_merge_period is not None and self.dmc_merge_period < 1:
            raise ValueError(f"dmc_merge_period must be None or >= 1, got {self.dmc_merge_period}")


def llama2_dmc(name: str, target_cr: float) -> DMCConfig:
    return DMCConfig(**LLAMA_SIZES[name].to_dict() | {"attention": "dmc"}, dmc_target_cr=target_cr)


SIZES = {
    "dmc-tiny": DMCConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160, max_seq_len=256),
    # NVIDIA's released retrofits (Megatron checkpoints): Llama-2 architecture, MHA
    "dmc-llama2-7b-8x": llama2_dmc("llama2-7b", 8.0),
    "dmc-llama2-13b-4x": llama2_dmc("llama2-13b", 4.0),
    "dmc-llama2-13b-8x": llama2_dmc("llama2-13b", 8.0),
}
