"""One MoE layer with 64 SwiGLU experts, top-8, at 1, 64 and 2048 tokens: the zoo::moe_experts kernel
choices ("cpu": grouped compute; "reference": every expert on every token, masked) beside HF transformers'
MixtralSparseMoeBlock on the same weights, measured in one run, and the cpu kernel against its matmul
bound: the experts' FLOPs (2 per weight per routed token, three matrices) over the matmul throughput the
machine measures (benchmarks.machine, as `zoo bench` does). Targets at 2048 tokens: cpu >= 1.4x faster than
HF, and within 1.3x of the bound.

    python -m benchmarks.moe_layer [--d-model 512] [--d-expert 256] [--repeats 5] [--threads N]
"""

import argparse

import torch

from benchmarks.machine import measure_matmul_flops, median_time
from zoo.nn.moe import MoE, router_stats
from zoo.ops import kernel_choice

KERNELS = ("cpu", "reference")


def hf_mixtral_block(layer: MoE, d_model: int, d_expert: int):
    """HF's sparse MoE block holding `layer`'s weights (topk-softmax routing, as Mixtral routes)."""
    import transformers
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = transformers.MixtralConfig(
        hidden_size=d_model,
        intermediate_size=d_expert,
        num_local_experts=layer.n_experts,
        num_experts_per_tok=layer.top_k,
    )
    config._experts_implementation = "eager"  # HF's per-expert loop, the reference implementation
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.weight)
        block.experts.gate_up_proj.copy_(layer.w_gate_up)  # the same fused [gate; up] layout
        block.experts.down_proj.copy_(layer.w_down)
    return block


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-expert", type=int, default=256)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = MoE(args.d_model, args.experts, args.top_k, args.d_expert, routing="topk-softmax").eval()
    layer.reset_parameters(std=0.02)
    torch.nn.init.normal_(layer.router.weight, std=0.02)
    hf_block = hf_mixtral_block(layer, args.d_model, args.d_expert)
    print(
        f"MoE layer: {args.experts} experts of {args.d_expert}, top-{args.top_k}, d_model {args.d_model}, fp32, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    matmul_flops = measure_matmul_flops()
    print(f"matmul throughput {matmul_flops / 1e9:.0f} GFLOP/s")
    print(
        f"{'tokens':>6s} {'cpu ms':>9s} {'reference ms':>13s} {'HF ms':>9s} {'reference/cpu':>14s} {'HF/cpu':>7s} "
        f"{'bound ms':>9s} {'cpu/bound':>9s}"
    )
    with torch.inference_mode():
        for tokens in (1, 64, 2048):
            x = torch.randn(tokens, args.d_model)
            times, outputs = {}, {}
            for kernel in KERNELS:
                with kernel_choice(kernel, ops=["moe_experts"]):
                    outputs[kernel] = layer(x)
                    times[kernel] = median_time(lambda: layer(x), args.repeats)
            outputs["hf"] = hf_block(x[None])[0]
            times["hf"] = median_time(lambda: hf_block(x[None]), args.repeats)
            for name in ("reference", "hf"):
                torch.testing.assert_close(outputs[name].reshape(tokens, -1), outputs["cpu"], atol=1e-4, rtol=1e-4)
            cpu = times["cpu"]
            bound = tokens * args.top_k * 3 * 2 * args.d_model * args.d_expert / matmul_flops
            print(
                f"{tokens:6d} {cpu * 1e3:9.2f} {times['reference'] * 1e3:13.2f} {times['hf'] * 1e3:9.2f} "
                f"{times['reference'] / cpu:13.1f}x {times['hf'] / cpu:6.1f}x {bound * 1e3:9.2f} {cpu / bound:8.2f}x"
            )
        counts = router_stats(layer, torch.randn(2048, args.d_model))[0]
        print(
            f"router at 2048 tokens: tokens per expert min {counts.min()}, median {counts.median()}, max "
            f"{counts.max()} (uniform: {2048 * args.top_k // args.experts}); {(counts == 0).sum()} experts idle"
        )


if __name__ == "__main__":
    main()
