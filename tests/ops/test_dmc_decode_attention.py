"""zoo::dmc_decode_attention: opcheck, the CPU implementation and the Triton kernel (interpreter) against
the reference per dtype, on the output, the new slot and every updated state."""

import pytest
import torch

import zoo
from tests.ops.conftest import assert_close
from zoo.ops.dmc_decode_attention import dmc_decode_attention, dmc_decode_attention_ref


def decode_inputs(B, H, Hkv, D, T, W, dtype, seed=0, merge_period=0):
    """A decode step's inputs: mixed decisions (k's last channel around the threshold 5), rows at
    position 0 and later, heads with different slot counts (one with an empty cache, one with a full one)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    k = randn(B, Hkv, D)
    k[..., -1] = 5 + 2 * randn(B, Hkv)
    positions = torch.tensor([0, 9, 13, 4])[:B]
    slots = torch.randint(1, max(T, 2), (B, Hkv), generator=g).clamp(max=T)
    slots[0] = 0  # position 0: a fresh state
    if B > 1:
        slots[1, 0] = T - 1  # a full head (an append fills the last slot)
    glen = torch.randint(1, 2 * max(W, 1) + 1, (B, Hkv), generator=g).float()
    tensors = [randn(B, H, D), k, randn(B, Hkv, D), randn(B, D), randn(B, D)]
    tensors = [t.to(dtype) for t in tensors] + [positions]
    tensors += [randn(B, Hkv, T, D).to(dtype), randn(B, Hkv, T, D).to(dtype), slots]
    tensors += [randn(B, Hkv, D), randn(B, Hkv, D), randn(B, Hkv).abs() + 1, glen]
    tensors += [randn(B, Hkv, W, D), randn(B, Hkv, W, D), randn(B, Hkv, W).abs()]
    return tensors, (5.0, W, D**-0.5, merge_period)


SHAPES = [  # B, H, Hkv, D, T, W
    (1, 1, 1, 16, 2, 12),
    (3, 6, 2, 16, 19, 5),
    (4, 4, 4, 32, 37, 12),
    (3, 4, 2, 16, 11, 0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_opcheck(shape):
    tensors, scalars = decode_inputs(*shape, torch.float32)
    torch.library.opcheck(dmc_decode_attention, (*tensors, *scalars))


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_against_reference(implementation, dtype, shape):
    for merge_period in (0, 3):
        tensors, scalars = decode_inputs(*shape, dtype, merge_period=merge_period)
        expected = dmc_decode_attention_ref(*tensors, *scalars)
        with zoo.ops.kernel_choice(implementation):
            got = dmc_decode_attention(*tensors, *scalars)
        for name, a, e in zip(("out", "new_k", "new_v", "slots", "ksum", "vsum", "z", "glen", "ring_k", "ring_v",
                               "ring_z"), got, expected):  # fmt: skip
            assert a.shape == e.shape and a.dtype == e.dtype, name
            if e.dtype == torch.int64:
                assert torch.equal(a, e), name
            else:
                assert_close(a, e, dtype if e.dtype == dtype else torch.float32, msg=name)


def test_a_merge_attends_to_the_new_value_of_the_overwritten_slot():
    """On a merge the last cached slot is stale: changing it must not change the output."""
    tensors, scalars = decode_inputs(3, 4, 2, 16, 11, 12, torch.float32)
    tensors[1][..., -1] = 9.0  # every head merges
    (
        out,
        *_,
    ) = dmc_decode_attention_ref(*tensors, *scalars)
    slots = tensors[8]
    stale = tensors[6].clone()
    rows, heads = torch.arange(3)[:, None], torch.arange(2)
    stale[rows, heads, (slots - 1).clamp(min=0)] = 100.0
    tensors[6] = stale
    for implementation in ("reference", "cpu", "triton"):
        with zoo.ops.kernel_choice(implementation):
            torch.testing.assert_close(dmc_decode_attention(*tensors, *scalars)[0], out, atol=1e-5, rtol=1e-5)


def test_cpu_reads_only_the_slots_in_use():
    """Slots past every head's count never enter the CPU output (NaN there would show)."""
    tensors, scalars = decode_inputs(3, 4, 2, 16, 30, 12, torch.float32)
    tensors[8] = tensors[8].clamp(max=20)
    expected = dmc_decode_attention_ref(*tensors, *scalars)[0]
    tensors[6][:, :, 21:] = float("nan")
    tensors[7][:, :, 21:] = float("nan")
    with zoo.ops.kernel_choice("cpu"):
        torch.testing.assert_close(dmc_decode_attention(*tensors, *scalars)[0], expected)
