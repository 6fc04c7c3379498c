"""Idiom fusion: find RMSNorm, Mamba-2's gated RMSNorm, SwiGLU, RoPE and the residual add + RMSNorm in a
captured core-ATen graph and replace each occurrence with one `zoo::` op node.

Input: a torch.fx.GraphModule of `torch.export.export(...).run_decompositions()` (`ep.module()` or
`ep.graph_module`), fp32 or low precision. The models stay plain torch (zoo/nn); what they compute shows
up in the graph as, for instance, RMSNorm of zoo/nn/norms.py:

    xf = _to_copy(x, float32)            # only when x is not fp32
    normed = mul(xf, rsqrt(add(mean(pow(xf, 2), [-1], True), eps)))
    out = mul(weight, _to_copy(normed, x.dtype))

Each idiom has a structural matcher rooted at one anchor node (rsqrt for the norms, sigmoid/silu for
SwiGLU, neg for RoPE) that walks the producers and accepts: casts present or absent (they appear only
for non-fp32 dtypes, and must then go to fp32 and back to x's dtype), either operand order of mul and
add, any constant (eps, head dim, group size), and `_assert_tensor_metadata` checks hanging off interior
nodes (dropped with the nodes they check). A match whose interior values are used outside it is left
alone, so every hit removes the whole pattern. Fusions are exact up to rounding order: the ops'
references are the model expressions (zoo/ops/<op>/reference.py).

Order matters and is fixed by IDIOMS: the gated norm before SwiGLU (x * silu(z) is also an elementwise
SwiGLU), and add_rms_norm runs on the zoo::rms_norm nodes that fuse_rms_norm made, absorbing the
residual add that feeds one (so disabling "rms_norm" also disables it).
"""

import operator
from collections.abc import Callable, Iterable

import torch
from torch.fx import Graph, GraphModule, Node

import zoo.ops.add_rms_norm  # noqa: F401  (registers zoo::add_rms_norm)
import zoo.ops.gated_rms_norm  # noqa: F401
import zoo.ops.rms_norm  # noqa: F401
import zoo.ops.rope  # noqa: F401
import zoo.ops.swiglu  # noqa: F401
from passes.graph_match import (
    VIEWS,
    aten,
    cast_source,
    computing_users,
    dtype_of,
    erase_nodes,
    is_call,
    only_user,
    position_in,
    same_shape,
    shape_of,
    value_of,
)


def _operands(node: Node) -> list[tuple[Node, object]]:
    """The two orders (a, b) of a commutative binary op's operands."""
    a, b = node.args[:2]
    return [(a, b), (b, a)]


def _is_last_dim(dim, ndim: int) -> bool:
    return dim in (-1, ndim - 1)


def _silu_fp32(node) -> tuple[Node, list[Node]] | None:
    """(z, interior) when node computes silu(z) on an fp32 tensor z: aten.silu(z) or z * sigmoid(z)."""
    if is_call(node, aten.silu.default):
        z, interior = node.args[0], [node]
    elif is_call(node, aten.mul.Tensor):
        for z, sigmoid in _operands(node):
            if is_call(sigmoid, aten.sigmoid.default) and sigmoid.args[0] is z and only_user(sigmoid) is node:
                interior = [node, sigmoid]
                break
        else:
            return None
    else:
        return None
    return (z, interior) if dtype_of(z) == torch.float32 else None


def _silu_in_dtype(node) -> tuple[Node, list[Node]] | None:
    """(gate, interior) when node is F.silu(gate) in gate's dtype: silu in fp32 directly, or for other
    dtypes cast(silu(cast(gate, fp32)), gate.dtype) as F.silu decomposes."""
    gate_dtype = dtype_of(node)
    inner = cast_source(node, gate_dtype)
    if inner is None:
        return _silu_fp32(node)
    found = _silu_fp32(inner)
    if found is None or only_user(inner) is not node:
        return None
    upcast, interior = found
    gate = cast_source(upcast, torch.float32)
    if gate is None or dtype_of(gate) != gate_dtype:
        return None
    if all(user in interior for user in computing_users(upcast)):
        interior = [*interior, upcast]
    return gate, [node, *interior]


def _fp32_source(node) -> tuple[Node, list[Node]] | None:
    """(x, casts) for an fp32 operand that is x itself (x fp32) or x.float() (x of another dtype)."""
    source = cast_source(node, torch.float32)
    if source is None:
        return (node, []) if dtype_of(node) == torch.float32 else None
    return (source, [node]) if dtype_of(source) != torch.float32 else None


def _cast_back(node: Node, dtype: torch.dtype) -> tuple[Node, list[Node]] | None:
    """(value, casts): the fp32 `node` itself when dtype is fp32, else its only user `.to(dtype)`."""
    if dtype == torch.float32:
        return node, []
    user = only_user(node)
    return (user, [user]) if user is not None and cast_source(user, dtype) is node else None


def _weight_mul(node: Node, dim) -> tuple[Node, Node] | None:
    """(weight, product) when the only user of node multiplies it by a (D,) weight."""
    user = only_user(node)
    if not is_call(user, aten.mul.Tensor):
        return None
    for value, weight in _operands(user):
        if value is node and isinstance(weight, Node) and same_shape(shape_of(weight), (dim,)):
            return weight, user
    return None


def _rms_statistics(rsqrt: Node) -> tuple[Node, Node, float, list[Node]] | None:
    """(source, normed, eps, interior) for normed = source * rsqrt(mean(source^2, -1, keepdim) + eps)."""
    add = rsqrt.args[0]
    if not is_call(add, aten.add.Tensor) or len(add.args) != 2 or add.kwargs or not isinstance(add.args[1], float):
        return None
    mean, eps = add.args
    if not is_call(mean, aten.mean.dim) or only_user(mean) is not add or only_user(add) is not rsqrt:
        return None
    power, dims = mean.args[:2]
    keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    if not keepdim or mean.kwargs.get("dtype") is not None or not is_call(power, aten.pow.Tensor_Scalar):
        return None
    source = power.args[0]
    shape = shape_of(source)
    if shape is None or list(dims) not in ([-1], [len(shape) - 1]) or power.args[1] != 2:
        return None
    normed = only_user(rsqrt)
    if only_user(power) is not mean or not is_call(normed, aten.mul.Tensor) or source not in normed.args[:2]:
        return None
    return source, normed, eps, [power, mean, add, rsqrt, normed]


# ---- rewriting -----------------------------------------------------------------------------------------


def _interior_is_private(interior: list[Node], output: Node) -> bool:
    """Whether nothing outside the pattern uses its intermediate values."""
    inside = set(interior)
    return all(all(user in inside for user in computing_users(node)) for node in interior if node is not output)


def _replace(graph: Graph, op, args: tuple, output: Node, interior: list[Node]) -> bool:
    """Replace the pattern ending in `output` by one call of `op`; False (graph untouched) when an
    intermediate value of the pattern is used elsewhere."""
    if not _interior_is_private(interior, output):
        return False
    with graph.inserting_before(output):
        fused = graph.call_function(op, args)
    fused.meta.update(
        {key: output.meta[key] for key in ("val", "stack_trace", "nn_module_stack") if key in output.meta}
    )
    output.replace_all_uses_with(fused)
    erase_nodes(graph, interior)
    return True


def _finish(gm: GraphModule, hits: int) -> int:
    if hits:
        gm.graph.lint()
        gm.recompile()
    return hits


# ---- the idioms ----------------------------------------------------------------------------------------


def fuse_rms_norm(gm: GraphModule) -> int:
    """weight * (x.float() * rsqrt(mean(x.float()^2, -1) + eps)).to(x.dtype) -> zoo::rms_norm(x, weight, eps)."""
    graph, hits = gm.graph, 0
    for rsqrt in [node for node in graph.nodes if is_call(node, aten.rsqrt.default)]:
        stats = _rms_statistics(rsqrt)
        if stats is None:
            continue
        upcast, normed, eps, interior = stats
        source = _fp32_source(upcast)
        if source is None:
            continue
        x, casts = source
        back = _cast_back(normed, dtype_of(x))
        if back is None:
            continue
        value, casts_back = back
        weighted = _weight_mul(value, shape_of(x)[-1])
        if weighted is None:
            continue
        weight, output = weighted
        if dtype_of(output) != torch.promote_types(dtype_of(x), dtype_of(weight)):
            continue
        private_casts = [cast for cast in casts if set(computing_users(cast)) <= set(interior)]
        interior = [*interior, *casts_back, output, *private_casts]
        hits += _replace(graph, torch.ops.zoo.rms_norm.default, (x, weight, eps), output, interior)
    return _finish(gm, hits)


def fuse_gated_rms_norm(gm: GraphModule) -> int:
    """weight * rmsnorm_grouped(x.float() * silu(z.float())).to(x.dtype), the statistics over a view
    (..., D / group_size, group_size) -> zoo::gated_rms_norm(x, z, weight, group_size, eps)."""
    graph, hits = gm.graph, 0
    for rsqrt in [node for node in graph.nodes if is_call(node, aten.rsqrt.default)]:
        stats = _rms_statistics(rsqrt)
        if stats is None:
            continue
        groups, normed, eps, interior = stats
        if not is_call(groups, *VIEWS):
            continue
        gated, group_shape, full_shape = groups.args[0], shape_of(groups), shape_of(groups.args[0])
        if not is_call(gated, aten.mul.Tensor) or full_shape is None or len(group_shape) != len(full_shape) + 1:
            continue
        group_size = group_shape[-1]
        if not isinstance(group_size, int) or not same_shape(group_shape[:-2], full_shape[:-1]):
            continue
        flat = only_user(normed)
        if not is_call(flat, *VIEWS) or not same_shape(shape_of(flat), full_shape):
            continue
        match = None
        for x_operand, gate_operand in reversed(_operands(gated)):  # the model writes x * silu(z)
            silu = _silu_fp32(gate_operand)
            x_source = _fp32_source(x_operand)
            z_source = silu and _fp32_source(silu[0])
            if silu and x_source and z_source:
                match = x_source, z_source, silu[1]
                break
        if match is None:
            continue
        (x, x_casts), (z, z_casts), silu_nodes = match
        if not same_shape(shape_of(z), shape_of(x)):
            continue
        back = _cast_back(flat, dtype_of(x))
        if back is None:
            continue
        value, casts_back = back
        weighted = _weight_mul(value, full_shape[-1])
        if weighted is None:
            continue
        weight, output = weighted
        if dtype_of(output) != torch.promote_types(dtype_of(x), dtype_of(weight)):
            continue
        interior = [gated, *silu_nodes, groups, *interior, flat, *casts_back, output]
        interior += [cast for cast in x_casts + z_casts if set(computing_users(cast)) <= set(interior)]
        args = (x, z, weight, group_size, eps)
        hits += _replace(graph, torch.ops.zoo.gated_rms_norm.default, args, output, interior)
    return _finish(gm, hits)


def fuse_add_rms_norm(gm: GraphModule) -> int:
    """zoo::rms_norm(x + residual, weight, eps), x and residual of one shape and dtype ->
    zoo::add_rms_norm(x, residual, weight, eps), whose second output replaces the sum's other uses."""
    graph, hits = gm.graph, 0
    position = position_in(graph)
    for norm in [node for node in graph.nodes if is_call(node, torch.ops.zoo.rms_norm.default)]:
        total, weight, eps = norm.args
        if not is_call(total, aten.add.Tensor) or total.kwargs or len(total.args) != 2:
            continue
        x, residual = total.args
        if not all(isinstance(t, Node) for t in (x, residual)):
            continue
        if not (same_shape(shape_of(x), shape_of(total)) and same_shape(shape_of(residual), shape_of(total))):
            continue
        if not dtype_of(x) == dtype_of(residual) == dtype_of(total):
            continue
        anchor = max(total, weight, key=position)  # the fused node goes after the last of its inputs
        if any(position(user) <= position(anchor) for user in total.users):
            continue
        with graph.inserting_after(anchor):
            fused = graph.call_function(torch.ops.zoo.add_rms_norm.default, (x, residual, weight, eps))
        with graph.inserting_after(fused):
            normed = graph.call_function(operator.getitem, (fused, 0))
            summed = graph.call_function(operator.getitem, (fused, 1))
        normed.meta["val"], summed.meta["val"] = value_of(norm), value_of(total)
        fused.meta["val"] = (value_of(norm), value_of(total))
        for key in ("stack_trace", "nn_module_stack"):
            if key in norm.meta:
                fused.meta[key] = norm.meta[key]
        norm.replace_all_uses_with(normed)
        total.replace_all_uses_with(summed)
        erase_nodes(graph, [norm, total])
        hits += 1
    return _finish(gm, hits)


def fuse_swiglu(gm: GraphModule) -> int:
    """F.silu(gate) * up, gate and up of one shape and dtype -> zoo::swiglu(gate, up)."""
    graph, hits = gm.graph, 0
    for product in [node for node in graph.nodes if is_call(node, aten.mul.Tensor)]:
        if product.kwargs or len(product.args) != 2:
            continue
        for silu_operand, up in _operands(product):
            found = isinstance(silu_operand, Node) and isinstance(up, Node) and _silu_in_dtype(silu_operand)
            if not found:
                continue
            gate, interior = found
            shapes_match = same_shape(shape_of(gate), shape_of(up)) and same_shape(shape_of(gate), shape_of(product))
            if shapes_match and dtype_of(gate) == dtype_of(up) and silu_operand is not up:
                hits += _replace(graph, torch.ops.zoo.swiglu.default, (gate, up), product, [*interior, product])
                break
    return _finish(gm, hits)


def _halves(neg: Node) -> tuple[Node, Node, list[Node]] | None:
    """(x, first half of x, nodes) when `neg` negates the second half of x along the last dim, split by
    split_with_sizes / split (then getitem) or by two slices."""
    second = neg.args[0]
    if is_call(second, operator.getitem) and second.args[1] == 1:
        split = second.args[0]
        if not is_call(split, aten.split_with_sizes.default, aten.split.Tensor):
            return None
        x, sizes = split.args[:2]
        dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
        shape = shape_of(x)
        if shape is None or not _is_last_dim(dim, len(shape)) or not isinstance(shape[-1], int):
            return None
        half = shape[-1] // 2
        if shape[-1] % 2 or (list(sizes) != [half, half] if isinstance(sizes, (list, tuple)) else sizes != half):
            return None
        first = [user for user in split.users if is_call(user, operator.getitem) and user.args[1] == 0]
        if len(split.users) != 2 or len(first) != 1:
            return None
        return x, first[0], [split, first[0], second]
    if is_call(second, aten.slice.Tensor):
        x = second.args[0]
        shape = shape_of(x)
        if shape is None or not isinstance(shape[-1], int) or shape[-1] % 2:
            return None
        half = shape[-1] // 2
        dim, start, end = (list(second.args[1:]) + [0, None, None])[:3]
        if not _is_last_dim(dim, len(shape)) or start != half or (end is not None and end < shape[-1]):
            return None
        for user in x.users:
            if is_call(user, aten.slice.Tensor) and list(user.args[1:4]) in ([dim, 0, half], [-1, 0, half]):
                return x, user, [user, second]
    return None


def fuse_rope(gm: GraphModule) -> int:
    """x * cos + cat([-x2, x1], -1) * sin, with x1, x2 the halves of x's last dim -> zoo::rope(x, cos, sin)."""
    graph, hits = gm.graph, 0
    for neg in [node for node in graph.nodes if is_call(node, aten.neg.default)]:
        halves = _halves(neg)
        if halves is None:
            continue
        x, first, split_nodes = halves
        cat = only_user(neg)
        if not is_call(cat, aten.cat.default) or list(cat.args[0]) != [neg, first]:
            continue
        if not _is_last_dim(cat.args[1] if len(cat.args) > 1 else 0, len(shape_of(x))):
            continue
        rotated = only_user(cat)
        if not is_call(rotated, aten.mul.Tensor) or cat not in rotated.args[:2]:
            continue
        sin = rotated.args[1] if rotated.args[0] is cat else rotated.args[0]
        output = only_user(rotated)
        if not is_call(output, aten.add.Tensor) or output.kwargs or rotated not in output.args[:2]:
            continue
        direct = output.args[1] if output.args[0] is rotated else output.args[0]
        if not is_call(direct, aten.mul.Tensor) or x not in direct.args[:2]:
            continue
        cos = direct.args[1] if direct.args[0] is x else direct.args[0]
        if not isinstance(cos, Node) or not isinstance(sin, Node) or not same_shape(shape_of(output), shape_of(x)):
            continue
        interior = [*split_nodes, neg, cat, rotated, direct, output]
        hits += _replace(graph, torch.ops.zoo.rope.default, (x, cos, sin), output, interior)
    return _finish(gm, hits)


# The order in which the idioms are fused (see the module docstring).
IDIOMS: dict[str, Callable[[GraphModule], int]] = {
    "gated_rms_norm": fuse_gated_rms_norm,
    "rms_norm": fuse_rms_norm,
    "add_rms_norm": fuse_add_rms_norm,
    "swiglu": fuse_swiglu,
    "rope": fuse_rope,
}


def idiom_fusion_pass(gm: GraphModule, disabled: Iterable[str] = ()) -> dict[str, int]:
    """Fuse every idiom of IDIOMS except the `disabled` ones, in place; returns the hits per idiom."""
    disabled = set(disabled)
    unknown = disabled - set(IDIOMS)
    if unknown:
        raise ValueError(f"unknown idioms {sorted(unknown)}; known: {', '.join(IDIOMS)}")
    return {name: 0 if name in disabled else fuse(gm) for name, fuse in IDIOMS.items()}
