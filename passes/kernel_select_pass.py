"""Kernel selection: which implementation (reference, cpu, triton) each zoo node runs, recorded in the graph.

The choice follows zoo.ops.kernels (auto | reference | cpu | triton, per op) for the device of the node's
first tensor input, and is written to `node.meta["zoo_kernel"]`, where reports and exporters read it.
"""

import torch

from zoo.ops.kernels import implementation_for
from zoo.ops.registry import op_of_node


def node_device(node: torch.fx.Node) -> torch.device:
    for arg in node.all_input_nodes:
        value = arg.meta.get("val")
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def kernel_select_pass(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Record the implementation of every zoo node; returns the count of nodes per implementation."""
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        op = op_of_node(node)
        if op is None:
            continue
        kernel = implementation_for(op.name, node_device(node))
        node.meta["zoo_kernel"] = kernel
        counts[kernel] = counts.get(kernel, 0) + 1
    return counts
