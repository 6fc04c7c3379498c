"""Rewrite memory-bound linear layers (a decode step's few rows) as an elementwise product and a row sum.

Recognises: `call_function` nodes of `torch._C._nn.linear` (F.linear) in a Dynamo FX graph whose input
has at most `max_rows` rows (static shapes), and replaces y = x W^T + b with
y = (x[..., None, :] * W).sum(-1) + b. Inductor lowers that to one vectorised loop that streams every
contiguous row of a row-major W once, which on CPU beats BLAS at one row (figures in docs/architecture.md).
With more rows the weight is streamed once per row, and oneDNN on a packed weight
(passes/prepack_linear_pass.py) was faster from two rows up, so larger inputs are left alone (MAX_ROWS).
The numerics are those of a matmul up to summation order.
"""

import torch
import torch.nn.functional as F

LINEAR_TARGETS = (torch._C._nn.linear, F.linear)
MAX_ROWS = 1


def rows_of(node: torch.fx.Node) -> int | None:
    value = node.meta.get("example_value")
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return None
    return value.numel() // value.shape[-1]


def matvec_pass(gm: torch.fx.GraphModule, max_rows: int = MAX_ROWS) -> int:
    """Rewrite in place; returns the number of linear nodes rewritten."""
    graph, hits = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in LINEAR_TARGETS:
            continue
        x, weight = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        rows = rows_of(x)
        if rows is None or rows > max_rows:
            continue
        with graph.inserting_before(node):
            product = graph.call_function(torch.mul, (graph.call_method("unsqueeze", (x, -2)), weight))
            out = graph.call_method("sum", (product, -1))
            if bias is not None:
                out = graph.call_function(torch.add, (out, bias))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        hits += 1
    graph.lint()
    gm.recompile()
    return hits
