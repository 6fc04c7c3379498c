"""Region growth: fold the neighbours of a zoo op into one larger region op where one kernel can do both,
on the fused graph that idiom fusion leaves (core ATen plus zoo ops).

- mamba2_decode_step: a Mamba-2 decode step's zoo::causal_conv1d_update (conv step + SiLU), the split of
  its output into x, B and C, zoo::ssd_state_update and the zoo::gated_rms_norm of its y become one
  zoo::mamba2_decode_step node: one kernel reads the conv window and the SSM state once and writes the
  normed output, the new window and the new state. It needs idiom_fusion.gated_rms_norm's node (disabling
  that idiom disables this growth too), and the norm's groups must be the B/C groups (Mamba-2's layout).
- moe_layer: the router matmul feeding zoo::moe_experts (x @ W_router^T, the same x) joins the experts op as
  zoo::moe_layer, whose kernel computes the logits, softmax and top-k of a token block in one pass.

The other regions were built whole by the models: DMC's decode op takes the pre-RoPE q, k and the RoPE
tables, so RoPE and the decision extraction already run inside zoo::dmc_decode_attention, and the MoE
routing (softmax / top-k) is inside zoo::moe_experts.

A growth rewrites only when every intermediate value of the region is private to it (a value used
elsewhere, e.g. by a debugging output, leaves the ops as they were), so each hit removes the whole chain.
"""

import operator
from collections.abc import Callable

import torch
from torch.fx import GraphModule, Node

import zoo.ops.causal_conv1d  # noqa: F401  (registers the ops this pass reads and writes)
import zoo.ops.gated_rms_norm  # noqa: F401
import zoo.ops.mamba2_decode_step  # noqa: F401
import zoo.ops.moe_experts  # noqa: F401
import zoo.ops.moe_layer  # noqa: F401
import zoo.ops.ssd_state_update  # noqa: F401
from passes.graph_match import aten, cast_source, computing_users, erase_nodes, is_call, only_user, shape_of, value_of

ZOO = torch.ops.zoo


def _getitem_users(node: Node) -> dict[int, list[Node]]:
    """A multi-output node's getitem users by output index (None when something else uses it)."""
    outputs: dict[int, list[Node]] = {}
    for user in computing_users(node):
        if not is_call(user, operator.getitem):
            return None
        outputs.setdefault(user.args[1], []).append(user)
    return outputs


def _hoist_before(anchor: Node, node: Node, position: dict[Node, int]) -> None:
    """Move `node` and the producers it needs in front of `anchor` (a functional graph: moving a pure
    computation earlier does not change what it computes)."""
    if node.op != "call_function" or position[node] < position[anchor]:
        return
    for producer in node.all_input_nodes:
        _hoist_before(anchor, producer, position)
    anchor.prepend(node)
    position[node] = position[anchor] - 0.5


def _insert_region(graph, anchor: Node, op, args: tuple, val) -> Node:
    """A call of `op` placed before `anchor`, its inputs moved ahead of it where they were computed later."""
    position = {node: i for i, node in enumerate(graph.nodes)}
    for arg in args:
        if isinstance(arg, Node):
            _hoist_before(anchor, arg, position)
    with graph.inserting_before(anchor):
        region = graph.call_function(op, args)
    region.meta.update({key: anchor.meta[key] for key in ("stack_trace", "nn_module_stack") if key in anchor.meta})
    region.meta["val"] = val
    return region


def _output(graph, region: Node, index: int, val) -> Node:
    with graph.inserting_after(region):
        item = graph.call_function(operator.getitem, (region, index))
    item.meta["val"] = val
    return item


# ---- Mamba-2 decode step -------------------------------------------------------------------------------


def _view_of(node, source: Node) -> bool:
    return is_call(node, aten.view.default, aten._unsafe_view.default, aten.reshape.default) and node.args[0] is source


def _conv_split(ssd: Node) -> tuple[Node, list[Node]] | None:
    """(the conv update node, interior) when ssd_state_update's x, B and C are views of the three parts of
    one split of causal_conv1d_update's output."""
    _, x, _, _, B, C = ssd.args[:6]
    parts = [view.args[0] if _view_of(view, view.args[0]) else None for view in (x, B, C)]
    if any(part is None or not is_call(part, operator.getitem) for part in parts):
        return None
    split = parts[0].args[0]
    if [part.args for part in parts] != [(split, 0), (split, 1), (split, 2)]:
        return None
    if not is_call(split, aten.split_with_sizes.default) or split.args[2:] not in ((-1,), (1,)):
        return None
    conv_out = split.args[0]
    if not is_call(conv_out, operator.getitem) or conv_out.args[1] != 0:
        return None
    conv = conv_out.args[0]
    if not is_call(conv, ZOO.causal_conv1d_update.default):
        return None
    return conv, [conv_out, split, *parts, x, B, C]


def _gated_norm_of_y(ssd: Node, y: Node) -> tuple[Node, list[Node]] | None:
    """(the gated norm node, interior) for gated_rms_norm(view(y, (b, h*p)) [cast to z's dtype], z, ...)."""
    flat = only_user(y)
    if not _view_of(flat, y):
        return None
    norm_input, interior = flat, [y, flat]
    user = only_user(flat)
    if cast_source(user) is flat:
        norm_input, interior = user, [*interior, user]
        user = only_user(user)
    if not is_call(user, ZOO.gated_rms_norm.default) or user.args[0] is not norm_input:
        return None
    return user, interior


def grow_mamba2_decode_step(gm: GraphModule) -> int:
    """causal_conv1d_update -> split -> ssd_state_update -> gated_rms_norm (one Mamba-2 decode step) ->
    zoo::mamba2_decode_step; the new conv window and SSM state replace the two ops' state outputs."""
    graph, hits = gm.graph, 0
    for ssd in [node for node in graph.nodes if is_call(node, ZOO.ssd_state_update.default)]:
        found = _conv_split(ssd)
        ssd_outputs = _getitem_users(ssd)
        if found is None or ssd_outputs is None or len(ssd_outputs.get(0, [])) != 1:
            continue
        conv, conv_interior = found
        conv_outputs = _getitem_users(conv)
        grown = _gated_norm_of_y(ssd, ssd_outputs[0][0])
        if grown is None or conv_outputs is None or len(conv_outputs.get(0, [])) != 1:
            continue
        norm, norm_interior = grown
        state, _, dt, A, _, _, D, dt_bias, dt_min, dt_max = ssd.args
        _, z, norm_weight, group_size, eps = norm.args
        batch, heads, head_dim, d_state = shape_of(state)
        groups = shape_of(ssd.args[4])[1]
        if group_size * groups != heads * head_dim:  # the norm's groups are not the B/C groups
            continue
        interior = [*conv_interior, *norm_interior]
        region_nodes = {*interior, conv, ssd, norm}
        if any(user not in region_nodes for node in interior for user in computing_users(node)):
            continue
        window, xbc, conv_weight, conv_bias = conv.args
        args = (window, state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, dt_min, dt_max, eps)
        values = (value_of(norm), value_of(conv)[1], value_of(ssd)[1])
        region = _insert_region(graph, conv, ZOO.mamba2_decode_step.default, args, values)
        for index, old_outputs in ((0, [norm]), (1, conv_outputs.get(1, [])), (2, ssd_outputs.get(1, []))):
            new_output = _output(graph, region, index, values[index])
            for old in old_outputs:
                old.replace_all_uses_with(new_output)
        erase_nodes(graph, [*interior, norm, *conv_outputs.get(1, []), *ssd_outputs.get(1, []), conv, ssd])
        hits += 1
    return hits


# ---- MoE router ----------------------------------------------------------------------------------------


def _router_weight(logits: Node, x: Node) -> tuple[Node, list[Node]] | None:
    """(W, interior) when logits = x @ W^T with a 2-d W (nn.Linear without bias in core ATen)."""
    if not is_call(logits, aten.mm.default) or logits.args[0] is not x:
        return None
    transposed = logits.args[1]
    if is_call(transposed, aten.permute.default) and list(transposed.args[1]) == [1, 0]:
        weight = transposed.args[0]
    elif is_call(transposed, aten.t.default):
        weight = transposed.args[0]
    else:
        return None
    if only_user(transposed) is not logits or len(shape_of(weight) or ()) != 2:
        return None
    return weight, [transposed, logits]


def grow_moe_layer(gm: GraphModule) -> int:
    """moe_experts(x, x @ W_router^T, ...) -> zoo::moe_layer(x, W_router, ...)."""
    graph, hits = gm.graph, 0
    for experts in [node for node in graph.nodes if is_call(node, ZOO.moe_experts.default)]:
        x, logits, *rest = experts.args
        found = _router_weight(logits, x)
        if found is None or only_user(logits) is not experts:
            continue
        weight, interior = found
        region = _insert_region(graph, experts, ZOO.moe_layer.default, (x, weight, *rest), value_of(experts))
        experts.replace_all_uses_with(region)
        erase_nodes(graph, [experts, *interior])
        hits += 1
    return hits


# the growths in the order the pass manager runs them (after idiom fusion, before kernel selection)
GROWTHS: dict[str, Callable[[GraphModule], int]] = {
    "mamba2_decode_step": grow_mamba2_decode_step,
    "moe_layer": grow_moe_layer,
}
