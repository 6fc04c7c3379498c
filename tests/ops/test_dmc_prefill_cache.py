"""zoo::dmc_prefill_cache: opcheck, the CPU implementation and the Triton kernel (interpreter) against the
reference per dtype, on the slots and every piece of the open slot's state."""

import pytest
import torch

import zoo
from tests.ops.conftest import assert_close
from zoo.nn.dmc import partial_accumulation
from zoo.ops.dmc_prefill_cache import OUTPUTS, dmc_prefill_cache, dmc_prefill_cache_ref


def prefill_inputs(B, Hkv, L, D, W, dtype, seed=0):
    """The eval forward's tensors for mixed hard decisions and ragged prompt lengths (one of 1 token)."""
    g = torch.Generator().manual_seed(seed)
    alpha = (torch.rand(B, Hkv, L, generator=g) < 0.6).float()
    alpha[..., 0] = 0
    omega = torch.rand(B, Hkv, L, generator=g) + 0.05
    kv = torch.randn(B, Hkv, L, 2 * D, generator=g)
    kv[..., D - 1] = 0  # channel D-1 of the key is zeroed
    acc, weight = partial_accumulation(kv, alpha, omega, W)
    k_slot, v_slot = torch.randn(B, Hkv, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g)
    lengths = torch.tensor([L, 1, max(1, L - 6)])[:B]
    return alpha, omega, kv.to(dtype), acc, weight, k_slot.to(dtype), v_slot.to(dtype), lengths


SHAPES = [  # B, Hkv, L, D, W, capacity
    (1, 1, 1, 16, 12, 1),
    (3, 2, 37, 16, 5, 40),
    (3, 2, 37, 16, 12, 37),
    (2, 3, 19, 32, 0, 23),
    (3, 2, 29, 16, 4, 7),  # a capacity below the slots some heads keep: those are dropped
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_opcheck(shape):
    *dims, capacity = shape
    torch.library.opcheck(dmc_prefill_cache, (*prefill_inputs(*dims, torch.float32), capacity, dims[-1]))


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_against_reference(implementation, dtype, shape):
    *dims, capacity = shape
    inputs = prefill_inputs(*dims, dtype)
    expected = dmc_prefill_cache_ref(*inputs, capacity, dims[-1])
    with zoo.ops.kernel_choice(implementation):
        got = dmc_prefill_cache(*inputs, capacity, dims[-1])
    for name, a, e in zip(OUTPUTS, got, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        if e.dtype == torch.int64:
            assert torch.equal(a, e), name
        else:
            assert_close(a, e, dtype if e.dtype == dtype else torch.float32, msg=name)


def test_slots_are_the_kept_positions_in_order():
    alpha = torch.tensor([[[0.0, 1, 1, 0, 0, 1, 0, 1]]])  # groups {0,1,2} {3} {4,5} {6,7}
    inputs = list(prefill_inputs(1, 1, 8, 16, 3, torch.float32))
    inputs[0] = alpha
    k, v, slots, *_, glen, ring_k, ring_v, ring_z = dmc_prefill_cache_ref(*inputs, 6, 3)
    assert slots.item() == 4 and glen.item() == 2
    torch.testing.assert_close(k[0, 0, :4], inputs[5][0, 0, [2, 3, 5, 7]])
    assert (k[0, 0, 4:] == 0).all()
    omega = inputs[1][0, 0]
    torch.testing.assert_close(ring_z[0, 0], torch.stack([omega[6], omega[7], torch.tensor(0.0)]))  # 6 % 3 = 0


@pytest.mark.parametrize("shape", SHAPES[1:3], ids=str)
def test_kernel_writes_every_output_element(shape):
    """Outputs holding garbage before the launch (as a TensorRT plugin's do) come out as the reference's:
    the kernel zeroes the slots no kept position reached."""
    from zoo.ops.dmc_prefill_cache.triton_kernel import launch_into

    *dims, capacity = shape
    inputs = prefill_inputs(*dims, torch.float32)
    expected = dmc_prefill_cache_ref(*inputs, capacity, dims[-1])
    garbage = tuple(
        torch.full_like(e, 7) if e.dtype == torch.int64 else torch.full_like(e, float("nan")) for e in expected
    )
    launch_into(garbage, *inputs, dims[-1])
    for name, a, e in zip(OUTPUTS, garbage, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4, msg=name)
