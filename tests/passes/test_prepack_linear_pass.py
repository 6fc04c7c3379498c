import operator

import pytest
import torch

import zoo
from passes.backend import zoo_inductor
from passes.prepack_linear_pass import prepack_linear_pass
from tests.passes.test_matvec_pass import capture, decode_args

PREPACKED = torch.ops.zoo_cpu.prepacked_linear.default


def prepacked_nodes(gm):
    return [node for node in gm.graph.nodes if node.target is PREPACKED]


def test_layers_of_one_input_become_one_matmul_and_match_eager():
    model = zoo.build("llama-tiny", seed=1)  # 2 layers: q, k, v, o, gate, up, down; untied lm_head
    with torch.no_grad():
        gm, inputs = capture(model.decode_step, *decode_args(model, batch=3))
        expected = gm(*inputs)
        assert prepack_linear_pass(gm, inputs) == 2 * 7 + 1
        got = gm(*inputs)
    groups = sorted(len(node.args[1]) for node in prepacked_nodes(gm))
    assert groups == [1] * 5 + [2] * 2 + [3] * 2  # per layer [q, k, v], o, [gate, up], down; the lm_head
    assert not any(node.target is torch._C._nn.linear for node in gm.graph.nodes)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


class TwoHeads(torch.nn.Module):
    """Two biased layers and one unbiased one on the same input, one on another."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 5), torch.nn.Linear(8, 3)
        self.c, self.d = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.d(self.a(x)), self.b(x), self.c(x)


def test_biases_are_stacked_and_unbiased_layers_grouped_apart():
    module, x = TwoHeads(), torch.randn(2, 7, 8)
    with torch.no_grad():
        gm, inputs = capture(module, x)
        assert prepack_linear_pass(gm, inputs) == 4
        got = gm(*inputs)
        expected = module(x)
    assert sorted((len(n.args[1]), len(n.args[2])) for n in prepacked_nodes(gm)) == [(1, 0), (1, 1), (2, 2)]
    splits = [n for n in gm.graph.nodes if n.target is operator.getitem]
    assert len(splits) == 2
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_packed_copy_follows_in_place_updates_and_new_storage():
    module, x = TwoHeads(), torch.randn(3, 8)
    with torch.no_grad():
        compiled = torch.compile(module, backend=zoo_inductor, fullgraph=True)
        compiled(x)
        module.a.weight.mul_(-2)  # in place: the version counter moves
        torch.testing.assert_close(compiled(x)[0], module(x)[0], atol=1e-5, rtol=1e-5)
        module.b.weight.data = module.b.weight.data.T.contiguous().T  # new storage, same values
        module.b.weight.data.add_(1)
        torch.testing.assert_close(compiled(x)[1], module(x)[1], atol=1e-5, rtol=1e-5)


def test_graphs_with_autograd_and_weights_that_are_not_parameters_are_left_alone():
    module, x = TwoHeads(), torch.randn(3, 8)
    gm, inputs = capture(module, x)  # grad enabled: the packed copy could not follow training
    assert prepack_linear_pass(gm, inputs) == 0

    def plain_weight(x, w):
        return torch.nn.functional.linear(x, w)

    with torch.no_grad():
        gm, inputs = capture(plain_weight, x, torch.randn(4, 8))
        assert prepack_linear_pass(gm, inputs) == 0


# llama-tiny: 2 layers of q, k, v, o, gate, up, down and an untied lm_head; gpt-tiny: q, k, v, o, up, down
# and the tied lm_head
@pytest.mark.parametrize(
    "name, batch, hits",
    [
        ("llama-tiny", 1, {"matvec_pass": 15, "prepack_linear_pass": 0}),
        ("gpt-tiny", 4, {"matvec_pass": 0, "prepack_linear_pass": 13}),
    ],
)
def test_backend_records_hits_and_matches_eager(name, batch, hits):
    """The zoo backend runs the matvec rewrite on one-row layers, then the prepack pass on the rest."""
    model = zoo.build(name, seed=3)
    seen = []

    def recording_backend(gm, example_inputs):
        compiled = zoo_inductor(gm, example_inputs)
        seen.append(gm.meta["zoo_pass_hits"])
        return compiled

    with torch.no_grad():
        args = decode_args(model, batch=batch)
        expected = model.decode_step(*args)[0]
        got = torch.compile(model.decode_step, backend=recording_backend, fullgraph=True)(*args)[0]
    assert seen == [hits]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
