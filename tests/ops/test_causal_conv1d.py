"""zoo::causal_conv1d and zoo::causal_conv1d_update: the CPU implementations and the Triton kernels
(interpreter) against the references, per dtype, on y and on the conv window, with and without bias."""

import pytest
import torch
import torch.nn.functional as F

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref

DIM, K = 70, 4  # 70 channels: two blocks of the kernels' 64, the second partly masked
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def weights(with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(DIM, K, generator=g) * 0.5, (torch.randn(DIM, generator=g) if with_bias else None)


def prompts(lengths, dtype, seed=1):
    x = torch.randn(len(lengths), max(lengths), DIM, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x, torch.tensor(lengths)


def run(choice, op, *inputs):
    with zoo.ops.kernel_choice(choice):
        return op(*inputs)


LENGTHS = {"one-token": [1], "batch-3-ragged": [2, 19, 7], "batch-3-long": [17, 17, 3]}


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_prefill_matches_reference(implementation, dtype, lengths, with_bias):
    x, lengths = prompts(lengths, dtype)
    inputs = (x, *weights(with_bias), lengths)
    y, window = run(implementation, causal_conv1d, *inputs)
    y_ref, window_ref = causal_conv1d_ref(*inputs)
    assert y.shape == x.shape and y.dtype == dtype and window.shape == (x.shape[0], DIM, K)
    assert_close(y, y_ref, dtype)
    assert torch.equal(window, window_ref)  # raw inputs, copied


def test_reference_is_torch_conv1d_and_window_is_the_last_inputs():
    x, lengths = prompts([9, 2], torch.float32)
    weight, bias = weights(True)
    y, window = causal_conv1d_ref(x, weight, bias, lengths)
    conv = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), weight[:, None], bias, groups=DIM)
    assert_close(y, F.silu(conv).transpose(1, 2))
    assert torch.equal(window[0], x[0, 5:9].T)
    assert torch.equal(window[1], torch.cat([torch.zeros(DIM, 2), x[1, :2].T], dim=1))  # zeros before the start


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_update_matches_reference(implementation, dtype, batch, with_bias):
    g = torch.Generator().manual_seed(2)
    window, x = torch.randn(batch, DIM, K, generator=g).to(dtype), torch.randn(batch, DIM, generator=g).to(dtype)
    inputs = (window, x, *weights(with_bias))
    y, new_window = run(implementation, causal_conv1d_update, *inputs)
    y_ref, new_window_ref = causal_conv1d_update_ref(*inputs)
    assert y.dtype == dtype and new_window.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert torch.equal(new_window, new_window_ref)


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
def test_decode_steps_continue_the_prefill(implementation):
    """Prefill of a ragged batch, then steps from each row's window, equal the prefill of the whole rows."""
    x, lengths = prompts([3, 6], torch.float32)
    weight, bias = weights(True)
    y_full, _ = causal_conv1d_ref(x, weight, bias, torch.tensor([6, 6]))
    _, window = run(implementation, causal_conv1d, x, weight, bias, lengths)
    for t in range(3):
        y, window = run(implementation, causal_conv1d_update, window, x[:, 3 + t], weight, bias)
        assert_close(y[0], y_full[0, 3 + t])
    assert torch.equal(window[0], x[0, 2:6].T)  # row 0 has now seen positions 0..5


def test_opcheck():
    x, lengths = prompts([5, 3], torch.float32)
    weight, bias = weights(True)
    torch.library.opcheck(torch.ops.zoo.causal_conv1d.default, (x, weight, bias, lengths))
    torch.library.opcheck(torch.ops.zoo.causal_conv1d.default, (x, weight, None, lengths))
    torch.library.opcheck(torch.ops.zoo.causal_conv1d_update.default, (torch.randn(2, DIM, K), x[:, 0], weight, bias))


def test_bad_shapes_are_refused():
    x, lengths = prompts([5, 3], torch.float32)
    weight, bias = weights(True)
    with pytest.raises(ValueError, match="lengths"):
        causal_conv1d(x, weight, bias, lengths[:1])
    with pytest.raises(ValueError, match="window"):
        causal_conv1d_update(torch.randn(2, DIM, K + 1), x[:, 0], weight, bias)
