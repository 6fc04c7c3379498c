"""Run a CPU graph's linear layers through oneDNN on weights packed once (zoo/ops/onednn.py), and merge the
layers that read the same input into one matmul.

Recognises: `call_function` nodes of `torch._C._nn.linear` (F.linear) in a Dynamo FX graph whose weight is a
graph input bound to a float32 CPU nn.Parameter, in a graph compiled without autograd. The linear layers of
one input (q, k and v; a gated MLP's gate and up) become one `zoo_cpu::prepacked_linear(x, weights, biases)`
node over their weights stacked along the output axis, followed by a split; a layer alone becomes one over
its own weight. The op packs the stack on its first call and reuses it while the parameters are unchanged.
The numerics are those of a matmul up to summation order.

The op is defined with torch.library's low-level API (schema, CPU kernel, fake kernel): it is called once
per linear layer per step, and custom_op's Python wrapper cost about 7 us more per call.
"""

import operator

import torch

from passes.matvec_pass import LINEAR_TARGETS
from zoo.ops import onednn

_library = torch.library.Library("zoo_cpu", "DEF")
_library.define("prepacked_linear(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor")


def prepacked_linear(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    """F.linear(x, cat(weights), cat(biases)) through oneDNN on the packed stack; x (..., K), weights (N_i, K),
    biases (N_i,) each or none -> (..., sum N_i)."""
    return onednn.linear(x, *onednn.packed_stack(weights, biases))


def _fake(x, weights, biases):
    return x.new_empty((*x.shape[:-1], sum(w.shape[0] for w in weights)))


_library.impl("prepacked_linear", prepacked_linear, "CPU")
torch.library.register_fake("zoo_cpu::prepacked_linear", _fake, lib=_library)


def packable_weights(graph: torch.fx.Graph, example_inputs) -> set[torch.fx.Node]:
    """The placeholders bound to weight matrices (nn.Parameters) that oneDNN can read packed."""
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    return {
        node
        for node, value in zip(placeholders, example_inputs)
        if isinstance(value, torch.nn.Parameter) and value.dim() == 2 and onednn.packable(value)
    }


def bias_of(node: torch.fx.Node):
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")


def linear_groups(graph: torch.fx.Graph, packable: set[torch.fx.Node]) -> list[list[torch.fx.Node]]:
    """The rewritable linear nodes grouped by input (and by whether they have a bias), in graph order. A bias
    must be a graph input too, so that a group's node can stand where its first layer stood."""
    groups: dict[tuple, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in LINEAR_TARGETS or node.args[1] not in packable:
            continue
        bias = bias_of(node)
        if bias is None or bias.op == "placeholder":
            groups.setdefault((node.args[0], bias is None), []).append(node)
    return list(groups.values())


def prepack_linear_pass(gm: torch.fx.GraphModule, example_inputs) -> int:
    """Rewrite in place; returns the number of linear nodes rewritten (merged ones each count)."""
    graph, hits = gm.graph, 0
    for group in linear_groups(graph, packable_weights(graph, example_inputs)):
        weights = [node.args[1] for node in group]
        biases = [] if bias_of(group[0]) is None else [bias_of(node) for node in group]
        with graph.inserting_before(group[0]):
            out = graph.call_function(torch.ops.zoo_cpu.prepacked_linear.default, (group[0].args[0], weights, biases))
            parts = [out]
            if len(group) > 1:
                sizes = [node.meta["example_value"].shape[-1] for node in group]
                split = graph.call_function(torch.split, (out, sizes, -1))
                parts = [graph.call_function(operator.getitem, (split, i)) for i in range(len(group))]
        for node, part in zip(group, parts):
            node.replace_all_uses_with(part)
            graph.erase_node(node)
        hits += len(group)
    graph.lint()
    gm.recompile()
    return hits
