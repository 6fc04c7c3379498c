"""Turning a Llama model into a DMC model (SPECS 1.1, 1.3).

`dmc_from_llama` is the conversion at the end of the recipe's stage 1 ("zero_out"): same weights, with
the projection rows that produce channel D-1 of every query head and of every key head set to 0 (value
rows untouched). The decision logit then starts at k[D-1] - 5 = -5 (alpha ~ 0: append) and the
importance at sigmoid(0 + 5) ~ 0.993 (near-uniform averaging): the model behaves as the Llama with
channel D-1 of q and k dropped, and the retrofit training (stage 2) learns to merge.
"""

import torch

from zoo.errors import ZooError
from zoo.models.dmc.config import DMCConfig


def dmc_config_from(llama_config, window: int = 12, init_val: float = 5.0, target_cr: float = 1.0) -> DMCConfig:
    if llama_config.family not in ("llama", "dmc"):
        raise ZooError(f"DMC retrofits a llama-family model, not {llama_config.family!r}")
    values = llama_config.to_dict() | {"attention": "dmc"}
    values |= {"dmc_window": window, "dmc_init_val": init_val, "dmc_target_cr": target_cr}
    return DMCConfig(**values)


@torch.no_grad()
def zero_decision_rows(model) -> None:
    """Stage 1's end: weight (and bias) rows of channel D-1 of every q and k head set to 0."""
    for layer in model.layers:
        attn = layer.attn
        for proj, heads in ((attn.wq, attn.n_heads), (attn.wk, attn.n_kv_heads)):
            last_rows = torch.arange(heads) * attn.head_dim + attn.head_dim - 1
            proj.weight[last_rows] = 0
            if proj.bias is not None:
                proj.bias[last_rows] = 0


@torch.no_grad()
def dmc_from_llama(llama_model, window: int = 12, init_val: float = 5.0, zero_rows: bool = True):
    """A DMC model holding `llama_model`'s weights (decision rows zeroed unless zero_rows=False)."""
    from zoo.registry import build_from_config

    config = dmc_config_from(llama_model.config, window, init_val)
    model = build_from_config(config, dtype=next(llama_model.parameters()).dtype)
    model.load_state_dict(llama_model.state_dict())
    if zero_rows:
        zero_decision_rows(model)
    return model
