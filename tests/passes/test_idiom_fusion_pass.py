"""The idiom fusion pass on captured core-ATen graphs: the hit count per idiom per layer for llama-tiny
(decode step and prefill, fp32 and bf16) and mamba2-tiny, the fused graph's values against the unfused
graph's, and the patterns it must leave alone."""

import collections

import pytest
import torch
from torch.export import Dim

import zoo
from passes.idiom_fusion_pass import IDIOMS, fuse_rms_norm, idiom_fusion_pass
from tests.ops.conftest import assert_close


class Entry(torch.nn.Module):
    """One entry point of a model (decode_step or prefill) as a module for torch.export."""

    def __init__(self, model, entry: str):
        super().__init__()
        self.model, self.entry = model, entry

    def forward(self, tokens, positions_or_lengths, state):
        return getattr(self.model, self.entry)(tokens, positions_or_lengths, state)


def entry_inputs(model, entry: str, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    state = model.init_state(batch, 16)
    for tensor in state.values():
        tensor.copy_(torch.randn(tensor.shape, generator=g))
    if entry == "decode_step":
        return torch.randint(0, 256, (batch,), generator=g), torch.randint(0, 12, (batch,), generator=g), state
    return torch.randint(0, 256, (batch, 7), generator=g), torch.randint(1, 8, (batch,), generator=g), state


def capture(model, entry: str) -> torch.fx.GraphModule:
    """The core-ATen graph of model.<entry> with a dynamic batch (exported at batch 2)."""
    args = entry_inputs(model, entry, 2)
    batch = Dim("batch", min=1, max=64)
    dynamic = ({0: batch}, {0: batch}, {name: {0: batch} for name in args[2]})
    return torch.export.export(Entry(model, entry), args, dynamic_shapes=dynamic).run_decompositions().module()


def zoo_nodes(gm) -> collections.Counter:
    return collections.Counter(str(n.target).split(".")[1] for n in gm.graph.nodes if str(n.target).startswith("zoo."))


def fuse_and_compare(model, entry: str, dtype: torch.dtype) -> tuple[dict, torch.fx.GraphModule]:
    """Fuse the captured graph; its outputs (logits and state) at batch 3 equal the unfused graph's."""
    gm = capture(model, entry)
    with torch.no_grad():
        expected = gm(*entry_inputs(model, entry, 3, seed=1))
        hits = idiom_fusion_pass(gm)
        got = gm(*entry_inputs(model, entry, 3, seed=1))
    for actual, wanted in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)):
        assert_close(actual, wanted, dtype)
    return hits, gm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("entry", ["decode_step", "prefill"])
def test_llama_fuses_every_idiom_of_every_layer(entry, dtype):
    model = zoo.build("llama-tiny").to(dtype)
    n = model.config.n_layers
    hits, gm = fuse_and_compare(model, entry, dtype)
    # Every norm is found (two per layer and the final one); all but two then absorb the residual add
    # before them: the first layer's attention norm reads the embedding, the final norm reads the rows
    # picked from the residual stream.
    assert hits == {"gated_rms_norm": 0, "rms_norm": 2 * n + 1, "add_rms_norm": 2 * n - 1, "swiglu": n, "rope": 2 * n}
    assert zoo_nodes(gm) == {"rms_norm": 2, "add_rms_norm": 2 * n - 1, "swiglu": n, "rope": 2 * n}
    leftover = {torch.ops.aten.rsqrt.default, torch.ops.aten.neg.default}
    assert not [node for node in gm.graph.nodes if node.target in leftover]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mamba2_fuses_the_gated_norm_of_every_mamba_layer(dtype):
    model = zoo.build("mamba2-tiny").to(dtype)
    mamba_layers = model.config.pattern.count("M")
    hits, gm = fuse_and_compare(model, "decode_step", dtype)
    assert hits["gated_rms_norm"] == mamba_layers == 2
    # The pre-norms and the final norm: in fp32 the second layer's norm reads the residual sum directly;
    # in bf16 the residual stream is fp32 and cast to bf16 before each norm, which add_rms_norm leaves.
    assert hits["rms_norm"] == mamba_layers + 1
    assert hits["add_rms_norm"] == (mamba_layers - 1 if dtype == torch.float32 else 0)
    assert zoo_nodes(gm)["gated_rms_norm"] == mamba_layers


def test_an_idiom_can_be_disabled_by_name():
    model = zoo.build("llama-tiny")
    gm = capture(model, "decode_step")
    hits = idiom_fusion_pass(gm, disabled=["rope", "add_rms_norm"])
    assert hits["rope"] == hits["add_rms_norm"] == 0 and hits["rms_norm"] == 5 and hits["swiglu"] == 2
    assert sum(node.target == torch.ops.aten.neg.default for node in gm.graph.nodes) == 4
    with pytest.raises(ValueError, match="unknown idioms"):
        idiom_fusion_pass(gm, disabled=["layer_norm"])
    assert list(IDIOMS) == ["gated_rms_norm", "rms_norm", "add_rms_norm", "swiglu", "rope"]


class SharedNorm(torch.nn.Module):
    """An RMSNorm whose unweighted value is also returned: fusing it would not remove the pattern."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * normed, normed


class PlainNorm(SharedNorm):
    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_patterns_used_outside_are_left_and_plain_ones_fused():
    x = torch.randn(3, 8)
    shared = torch.export.export(SharedNorm(), (x,)).run_decompositions().module()
    assert fuse_rms_norm(shared) == 0
    plain_module = PlainNorm()
    plain = torch.export.export(plain_module, (x,)).run_decompositions().module()
    assert fuse_rms_norm(plain) == 1
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain_module(x), atol=1e-6, rtol=1e-5)
