"""Issue 3's retrofit demonstration on CPU: pretrain a tiny byte-level Llama on text that ships with
Python (its standard-library sources), convert it to DMC (stage 1: decision rows zeroed), retrofit it
towards a compression target, and print the held-out language-model loss and the compression ratio the
hard (inference) decisions reach (target: CR >= 2 with the loss within 10% of the converted model's).
A control continues the plain Llama for as many steps, to show what the extra training alone gives.

    python -m benchmarks.dmc_retrofit [--pretrain-steps 1000] [--retrofit-steps 800] [--target-cr 2.5] [--lr 1e-3]
"""

import argparse
import itertools
import json
import sysconfig
from pathlib import Path

import torch

from zoo.models.dmc.retrofit import dmc_from_llama, evaluate, next_token_loss, random_batches, retrofit
from zoo.models.llama import LlamaConfig
from zoo.registry import build_from_config


def corpus(max_bytes: int = 2_000_000) -> bytes:
    """Python's own standard-library sources, file by file in name order, up to max_bytes: ASCII text that
    ships with every Python (the bytes differ slightly between Python versions)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_bytes().decode("ascii", errors="ignore").encode()
        parts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return b"\n".join(parts)[:max_bytes]


def windows(text: bytes, length: int, stride: int) -> torch.Tensor:
    ids = torch.tensor(list(text), dtype=torch.long)
    return ids.unfold(0, length + 1, stride)


def train_lm(model, data: torch.Tensor, steps: int, lr: float, batch_size: int = 16, seed: int = 0) -> None:
    """Plain next-token training on random rows of `data` (N, L+1): the pretraining, and the control that
    continues the Llama for as many steps as the retrofit (the same batches: same seed and batch size)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for batch in itertools.islice(random_batches(data, batch_size, seed), steps):
        loss = next_token_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


@torch.no_grad()
def lm_loss(model, batch: torch.Tensor) -> float:
    return next_token_loss(model, batch).item()


# The demonstration's model: 0.85M parameters, bytes as tokens
CONFIG = LlamaConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384, max_seq_len=512)


def demonstrate(
    config: LlamaConfig = CONFIG,
    corpus_bytes: int = 2_000_000,
    seq_len: int = 128,
    pretrain_steps: int = 1000,
    retrofit_steps: int = 800,
    target_cr: float = 2.5,
    lr: float = 1e-3,
    log=print,
) -> dict:
    """Pretrain, convert, retrofit and run the control; returns the held-out losses (pretrained Llama,
    converted DMC = the starting loss, control) and the retrofit's evaluation history."""
    torch.manual_seed(0)
    text = corpus(corpus_bytes)
    split = int(0.9 * len(text))
    train = windows(text[:split], seq_len, seq_len)
    held_out = windows(text[split:], seq_len, seq_len)
    held_out = held_out[:: max(1, len(held_out) // 128)][:128]  # 128 windows spread over the held-out split
    llama = build_from_config(config, seed=0)
    log(
        f"corpus {len(text)} bytes; {len(train)} training windows of {seq_len} bytes, {len(held_out)} held out; "
        f"model {config.num_params():,} params"
    )
    train_lm(llama, train, pretrain_steps, lr=3e-3)
    llama_loss = lm_loss(llama, held_out)
    log(f"pretrained Llama: held-out loss {llama_loss:.3f} nats/byte after {pretrain_steps} steps")

    dmc = dmc_from_llama(llama)
    start_loss, start_cr = evaluate(dmc, held_out)
    log(f"converted to DMC (decision rows zeroed): loss {start_loss:.3f}, CR {start_cr:.2f}")
    history = retrofit(dmc, train, retrofit_steps, target_cr, eval_batch=held_out, lr=lr, eval_every=100)
    log(f"{'step':>5s} {'target':>7s} {'loss':>7s} {'CR':>6s}")
    for h in history:
        log(f"{h['step']:5d} {h['target_cr']:7.2f} {h['loss']:7.3f} {h['cr']:6.2f}")
    final = history[-1]
    log(
        f"retrofit: CR {final['cr']:.2f} (target {target_cr}), loss {final['loss']:.3f} = "
        f"{final['loss'] / start_loss:.3f}x the converted model's {start_loss:.3f}"
    )
    train_lm(llama, train, retrofit_steps, lr=lr)  # the control: no compression, the same batches
    control_loss = lm_loss(llama, held_out)
    log(
        f"control: the Llama trained {retrofit_steps} more steps without DMC reaches {control_loss:.3f}; "
        f"the retrofit's loss is {final['loss'] / control_loss:.3f}x that"
    )
    return {"llama_loss": llama_loss, "start_loss": start_loss, "control_loss": control_loss, "history": history}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--retrofit-steps", type=int, default=800)
    parser.add_argument("--target-cr", type=float, default=2.5)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Retrofit learning rate.")
    parser.add_argument("--json", default=None, help="Write the losses and the history here.")
    args = parser.parse_args(argv)
    result = demonstrate(
        seq_len=args.seq_len,
        pretrain_steps=args.pretrain_steps,
        retrofit_steps=args.retrofit_steps,
        target_cr=args.target_cr,
        lr=args.lr,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
