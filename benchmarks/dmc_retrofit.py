"""Issue 3's retrofit demonstration on CPU: pretrain a tiny character-level Llama on a small text that
ships with Python (the Zen of Python and standard-library docstrings), convert it to DMC (stage 1:
decision rows zeroed), retrofit it towards a compression target, and print the language-model loss and
the compression ratio reached (target: CR >= 2 with the loss within 10% of the converted model's).

    python -m benchmarks.dmc_retrofit [--pretrain-steps 600] [--retrofit-steps 600] [--target-cr 3] [--lr 3e-3]
"""

import argparse
import codecs
import json
import textwrap

import torch

from zoo.models.dmc.retrofit import dmc_from_llama, evaluate, retrofit
from zoo.models.llama import LlamaConfig
from zoo.registry import build_from_config


def corpus() -> bytes:
    """About 20 KB of English from the standard library, identical on every machine."""
    import argparse as argparse_module
    import collections
    import contextlib
    import functools
    import io
    import itertools

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this

    zen = codecs.decode(this.s, "rot13")
    modules = (json, textwrap, argparse_module, collections, contextlib, functools, itertools)
    docs = [zen] + [m.__doc__ or "" for m in modules]
    docs += [getattr(m, name).__doc__ or "" for m in modules for name in sorted(dir(m)) if not name.startswith("_")]
    return "\n\n".join(docs).encode("ascii", errors="ignore")


def windows(text: bytes, length: int, stride: int) -> torch.Tensor:
    ids = torch.tensor(list(text), dtype=torch.long)
    return ids.unfold(0, length + 1, stride)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--retrofit-steps", type=int, default=600)
    parser.add_argument("--target-cr", type=float, default=3.0)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="Retrofit learning rate.")
    parser.add_argument("--json", default=None, help="Write the history here.")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    text = corpus()
    split = int(0.9 * len(text))
    train, held_out = windows(text[:split], args.seq_len, 32), windows(text[split:], args.seq_len, args.seq_len)
    config = LlamaConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384, max_seq_len=512)
    llama = build_from_config(config, seed=0)
    print(
        f"corpus {len(text)} bytes; {len(train)} training windows of {args.seq_len}; "
        f"model {config.num_params():,} params"
    )

    optimizer = torch.optim.AdamW(llama.parameters(), lr=3e-3)
    llama.train()
    g = torch.Generator().manual_seed(0)
    for step in range(args.pretrain_steps):
        batch = train[torch.randint(0, len(train), (16,), generator=g)]
        loss = torch.nn.functional.cross_entropy(llama(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    llama.eval()
    with torch.no_grad():
        logits = llama(held_out[:, :-1])
        llama_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), held_out[:, 1:].flatten()).item()
    print(f"pretrained Llama: held-out loss {llama_loss:.3f} nats/byte after {args.pretrain_steps} steps")

    dmc = dmc_from_llama(llama)
    start_loss, start_cr = evaluate(dmc, held_out)
    print(f"converted to DMC (decision rows zeroed): loss {start_loss:.3f}, CR {start_cr:.2f}")
    history = retrofit(dmc, train, args.retrofit_steps, args.target_cr, eval_batch=held_out, lr=args.lr)
    print(f"{'step':>5s} {'target':>7s} {'loss':>7s} {'CR':>6s}")
    for h in history:
        print(f"{h['step']:5d} {h['target_cr']:7.2f} {h['loss']:7.3f} {h['cr']:6.2f}")
    final = history[-1]
    print(
        f"retrofit: CR {final['cr']:.2f} (target {args.target_cr}), loss {final['loss']:.3f} = "
        f"{final['loss'] / start_loss:.3f}x the converted model's {start_loss:.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"llama_loss": llama_loss, "start_loss": start_loss, "history": history}, f, indent=1)


if __name__ == "__main__":
    main()
