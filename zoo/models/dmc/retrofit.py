"""Turning a Llama model into a DMC model (docs/algorithms.md §1.1, 1.3).

`dmc_from_llama` is the conversion at the end of the recipe's stage 1 ("zero_out"): same weights, with
the projection rows that produce channel D-1 of every query head and of every key head set to 0 (value
rows untouched). The decision logit then starts at k[D-1] - 5 = -5 (alpha ~ 0: append) and the
importance at sigmoid(0 + 5) ~ 0.993 (near-uniform averaging): the model behaves as the Llama with
channel D-1 of q and k dropped, and the retrofit training (stage 2) learns to merge.
"""

import torch

from zoo.errors import ZooError
from zoo.models.dmc.config import DMCConfig


def dmc_config_from(
    llama_config, window: int = 12, init_val: float = 5.0, target_cr: float = 1.0, merge_period: int | None = None
) -> DMCConfig:
    """merge_period: the benchmark control DMCConfig.dmc_merge_period (None: decisions from the channel)."""
    if llama_config.family not in ("llama", "dmc"):
        raise ZooError(f"DMC retrofits a llama-family model, not {llama_config.family!r}")
    values = llama_config.to_dict() | {"attention": "dmc"}
    values |= {"dmc_window": window, "dmc_init_val": init_val, "dmc_target_cr": target_cr}
    return DMCConfig(**values | {"dmc_merge_period": merge_period})


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
def dmc_from_llama(
    llama_model, window: int = 12, init_val: float = 5.0, zero_rows: bool = True, merge_period: int | None = None
):
    """A DMC model holding `llama_model`'s weights (decision rows zeroed unless zero_rows=False)."""
    from zoo.registry import build_from_config

    config = dmc_config_from(llama_model.config, window, init_val, merge_period=merge_period)
    model = build_from_config(config, dtype=next(llama_model.parameters()).dtype)
    model.load_state_dict(llama_model.state_dict())
    if zero_rows:
        zero_decision_rows(model)
    return model


def next_token_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1] (B, L+1)."""
    logits = model(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def forward_with_decisions(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The DMC model's forward (as DecoderLM.forward: pre-norm blocks) returning (logits, decisions): each
    layer's mean hard decision per row (layers, B), straight-through in training (docs/algorithms.md §1.3)."""
    B, L = input_ids.shape
    positions = torch.arange(L, device=input_ids.device).expand(B, L)
    x = model.embed_tokens(input_ids, positions)
    rope = model.rope(positions, x.dtype)
    decisions = []
    for layer in model.layers:
        attended, mean_decision = layer.attn.forward_with_decisions(layer.attn_norm(x), rope)
        x = x + attended
        x = x + layer.mlp(layer.mlp_norm(x))
        decisions.append(mean_decision)
    return model.logits(x), torch.stack(decisions)


def next_token_loss_and_decisions(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """next_token_loss of a DMC model, and its decisions (layers, B) on the batch."""
    logits, decisions = forward_with_decisions(model, batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()), decisions


def random_batches(data: torch.Tensor, batch_size: int, seed: int):
    """Endless batches of random rows of `data`; the same seed gives the same batches."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield data[torch.randint(0, len(data), (batch_size,), generator=generator)]


def dmc_loss(decisions: torch.Tensor, target_cr: float) -> torch.Tensor:
    """One-sided compression loss (docs/algorithms.md §1.3) of a forward's decisions (layers, B): mean over the batch of
    relu(prior - mean over layers of the mean decision), prior = 1 - 1 / target_cr. It penalises only
    compressing less than the target."""
    prior = 1.0 - 1.0 / target_cr
    return torch.relu(prior - decisions.mean(dim=0)).mean()


def target_at(step: int, steps: int, target_cr: float, ramp: float = 0.8) -> float:
    """The compression target rises linearly from 1 to target_cr over the first `ramp` of the steps
    (stage 2, "retrofit"), then holds (stage 3, "finetune")."""
    return 1.0 + (target_cr - 1.0) * min(1.0, step / max(1, ramp * steps))


@torch.no_grad()
def evaluate(model, batch: torch.Tensor) -> tuple[float, float]:
    """(next-token cross-entropy, compression ratio) with hard decisions (eval mode) on `batch` (B, L+1).

    The ratio is 1 / (1 - mean merge rate) over layers, heads and positions after the first."""
    was_training = model.training
    model.eval()
    loss, decisions = next_token_loss_and_decisions(model, batch)
    loss, merged = loss.item(), decisions.mean().item()
    model.train(was_training)
    return loss, 1.0 / (1.0 - merged)


def retrofit(
    model,
    data: torch.Tensor,
    steps: int,
    target_cr: float,
    batch_size: int = 16,
    lr: float = 1e-3,
    eval_batch: torch.Tensor | None = None,
    eval_every: int = 50,
    seed: int = 0,
) -> list[dict]:
    """Train `model` (a DMC model) on rows of `data` (N, L+1) with LM loss + dmc_loss under a rising
    target. Returns the evaluation history: step, target, loss, compression ratio."""
    batches = random_batches(data, batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    eval_batch = data[:batch_size] if eval_batch is None else eval_batch
    history = []
    model.train()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            loss, ratio = evaluate(model, eval_batch)
            history.append({"step": step, "target_cr": target_at(step, steps, target_cr), "loss": loss, "cr": ratio})
        if step == steps:
            break
        loss, decisions = next_token_loss_and_decisions(model, next(batches))
        loss = loss + dmc_loss(decisions, target_at(step, steps, target_cr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return history
