"""Small structural matchers over torch.fx nodes of a captured core-ATen graph, shared by the fusion passes:
what a node calls, its value's dtype and shape, its users, dtype casts, and erasing a replaced pattern."""

from collections.abc import Callable, Iterable

import torch
from torch.fx import Graph, Node

aten = torch.ops.aten
CHECKS = (aten._assert_tensor_metadata.default,)
VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)


# ---- small matchers over nodes -------------------------------------------------------------------------


def is_call(node, *targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def value_of(node):
    """The FakeTensor (or real tensor) a node stands for, or None."""
    return node.meta.get("val") if isinstance(node, Node) else None


def dtype_of(node) -> torch.dtype | None:
    value = value_of(node)
    return value.dtype if isinstance(value, torch.Tensor) else None


def shape_of(node) -> tuple | None:
    value = value_of(node)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def same_shape(a: tuple | None, b: tuple | None) -> bool:
    """Equal shapes, symbolic sizes compared by their expressions (no guards are added)."""
    return a is not None and b is not None and len(a) == len(b) and all(str(x) == str(y) for x, y in zip(a, b))


def computing_users(node: Node) -> list[Node]:
    """The users of a node that compute something (dtype checks left out)."""
    return [user for user in node.users if not is_call(user, *CHECKS)]


def only_user(node: Node) -> Node | None:
    users = computing_users(node)
    return users[0] if len(users) == 1 else None


def cast_source(node, dtype: torch.dtype | None = None) -> Node | None:
    """The input of `node` when it is a pure dtype cast (to `dtype` when given), else None."""
    if is_call(node, aten._to_copy.default):
        if len(node.args) != 1 or set(node.kwargs) != {"dtype"}:
            return None
        target = node.kwargs["dtype"]
    elif is_call(node, torch.ops.prims.convert_element_type.default):
        target = node.args[1]
    else:
        return None
    return node.args[0] if dtype is None or target == dtype else None


def erase_nodes(graph: Graph, nodes: Iterable[Node]) -> None:
    """Erase a replaced pattern's nodes (and the dtype checks on them), consumers first."""
    for node in sorted(set(nodes), key=position_in(graph), reverse=True):
        for check in [user for user in node.users if is_call(user, *CHECKS)]:
            graph.erase_node(check)
        graph.erase_node(node)


def position_in(graph: Graph) -> Callable[[Node], int]:
    order = {node: i for i, node in enumerate(graph.nodes)}
    return order.__getitem__
