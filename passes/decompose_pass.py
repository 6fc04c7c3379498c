"""Decomposition: every zoo op of a captured program back to its reference's ATen graph.

The result is the "unfused" program: standard ATen ops only, what an exporter without the zoo's ops
(ONNX with standard operators) needs. Each op's reference (`<name>_ref`, zoo/ops/<folder>/reference.py)
has the op's signature, so it serves as the op's decomposition.
"""

import torch

from zoo.ops.registry import op_of_node, zoo_ops


def decompose_pass(program: torch.export.ExportedProgram) -> tuple[torch.export.ExportedProgram, int]:
    """(the program with every zoo node replaced by its reference's ops, number of zoo nodes replaced)."""
    hits = sum(op_of_node(node) is not None for node in program.graph.nodes)
    table = torch.export.default_decompositions()
    for op in zoo_ops().values():
        table[op.overload] = op.reference
    return program.run_decompositions(table), hits
