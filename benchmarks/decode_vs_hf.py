"""Greedy-decode time per output token (TPOT) of the zoo runtime (torch and compiled backends) against
HF transformers' `generate` on the same weights, measured side by side in one run.

    python -m benchmarks.decode_vs_hf [--model llama-small] [--batch 1] [--prompt-len 128] [--new-tokens 128]

The HF twin is built from the zoo config, saved as an HF checkpoint and loaded back through
zoo.from_pretrained, so both sides run identical weights. TPOT = (time of last token - time of first
token) / (tokens - 1), from per-token timestamps (HF's through a streamer); median over --repeats runs
after one warm-up run (which also compiles the compiled backend). Targets (issue 2): torch <= 0.8x HF,
compiled <= 0.5x HF.
"""

import argparse
import statistics
import tempfile
import time

import torch

import zoo
from runtime import Engine
from zoo.registry import family_of


class TimestampStreamer:
    """An HF streamer that records when each new token arrives (the first put() is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def build_hf_twin(name: str, path: str):
    import transformers

    config = zoo.get_config(name)
    kwargs = family_of(config).hf_converter.hf_config_from(config)
    model_type = kwargs.pop("model_type")
    hf_cls = {"llama": transformers.LlamaForCausalLM, "gpt2": transformers.GPT2LMHeadModel}[model_type]
    cfg_cls = {"llama": transformers.LlamaConfig, "gpt2": transformers.GPT2Config}[model_type]
    torch.manual_seed(0)
    hf_model = hf_cls(cfg_cls(**kwargs, bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
    hf_model.save_pretrained(path)
    return hf_model


def hf_tpot(hf_model, prompts: torch.Tensor, new_tokens: int) -> float:
    streamer = TimestampStreamer()
    with torch.inference_mode():
        hf_model.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, streamer=streamer,
        )
    token_times = streamer.times[1:]
    return (token_times[-1] - token_times[0]) / (len(token_times) - 1)


def zoo_tpot(engine: Engine, prompts: list[list[int]], new_tokens: int) -> float:
    return engine.generate_with_stats(prompts, new_tokens).tpot_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.batch > 1:
        raise SystemExit("HF streamers take batch 1 only; use --batch 1")

    with tempfile.TemporaryDirectory() as tmp:
        hf_model = build_hf_twin(args.model, tmp)
        model = zoo.from_pretrained(tmp)
    prompts = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
    prompt_lists = prompts.tolist()
    runners = {
        "hf-generate": lambda: hf_tpot(hf_model, prompts, args.new_tokens),
        "zoo-torch": lambda e=Engine.from_model(model, "torch"): zoo_tpot(e, prompt_lists, args.new_tokens),
        "zoo-compiled": lambda e=Engine.from_model(model, "compiled"): zoo_tpot(e, prompt_lists, args.new_tokens),
    }
    samples = {name: [] for name in runners}
    for name, run in runners.items():
        run()  # warm-up (and compilation)
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every runner alike
        for name, run in runners.items():
            samples[name].append(run())
    tpot = {name: statistics.median(v) for name, v in samples.items()}
    print(f"{args.model}: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"greedy, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'runner':14s} {'TPOT ms':>9s} {'vs HF':>7s}")
    for name, value in tpot.items():
        print(f"{name:14s} {value * 1e3:9.2f} {value / tpot['hf-generate']:6.2f}x")


if __name__ == "__main__":
    main()
