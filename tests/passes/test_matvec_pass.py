import torch

import zoo
from passes.matvec_pass import matvec_pass


def capture(fn, *args):
    """The Dynamo graph of fn(*args) as a backend sees it, and the inputs it takes (lifted parameters too)."""
    captured = []

    def grab(gm, example_inputs):
        captured.append((gm, example_inputs))
        return gm.forward

    torch.compile(fn, backend=grab, fullgraph=True, dynamic=False)(*args)
    return captured[0]


def decode_args(model, batch):
    state = model.init_state(batch, 16)
    model.prefill(torch.randint(0, 256, (batch, 5)), torch.full((batch,), 5), state)
    return torch.randint(0, 256, (batch,)), torch.full((batch,), 5), state


def test_decode_step_rewrites_every_linear_of_every_layer():
    model = zoo.build("llama-tiny")  # 2 layers: q, k, v, o, gate, up, down each, plus the untied lm_head
    with torch.no_grad():
        gm, inputs = capture(model.decode_step, *decode_args(model, batch=1))
        expected = gm(*inputs)
        assert matvec_pass(gm) == 2 * 7 + 1
        got = gm(*inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rows_above_the_limit_are_left_to_blas():
    model = zoo.build("gpt-tiny")
    with torch.no_grad():
        gm, _ = capture(model.decode_step, *decode_args(model, batch=3))
    assert matvec_pass(gm, max_rows=1) == 0
    assert matvec_pass(gm, max_rows=3) == 2 * 6 + 1  # q, k, v, o, up, down per layer; tied lm_head


def test_bias_is_kept():
    linear = torch.nn.Linear(8, 5)
    x = torch.randn(1, 8)
    with torch.no_grad():
        gm, inputs = capture(linear, x)
        assert matvec_pass(gm) == 1
        torch.testing.assert_close(gm(*inputs)[0], linear(x))
