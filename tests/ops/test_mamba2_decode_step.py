"""zoo::mamba2_decode_step: the CPU implementation and the fused Triton kernel (interpreter) against the
reference, per dtype, on the output, the conv window and the SSM state, at awkward sizes; the fused op
against the three-op chain it replaces and against the model's decode step; opcheck, export with a
dynamic batch, refused shapes, and the kernel compiling for sm_90."""

import json
import os
import subprocess
import sys

import pytest
import torch

import zoo.ops
from tests.ops.conftest import assert_close
from zoo.nn.mamba2 import Mamba2Mixer
from zoo.ops.causal_conv1d import causal_conv1d_update
from zoo.ops.gated_rms_norm import gated_rms_norm
from zoo.ops.mamba2_decode_step import mamba2_decode_step, mamba2_decode_step_ref
from zoo.ops.ssd_state_update import ssd_state_update

NO_LIMIT = (0.0, float("inf"))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (batch, heads, head_dim, d_state, groups, d_conv, conv bias, dt limit): head_dim 40 is two of the kernel's
# 32-row tiles, the second partly masked; 24 is one masked tile; d_state 6 and 5 mask the state tile's
# columns; d_conv 3 masks the window tile; groups 1 and 2 (a norm group of 2 and of 3 heads)
CASES = {
    "one-token-2-groups": (1, 4, 40, 6, 2, 4, True, NO_LIMIT),
    "batch-3-2-groups-clamped": (3, 4, 40, 6, 2, 4, False, (0.05, 0.5)),
    "batch-3-1-group-kernel-3": (3, 3, 24, 5, 1, 3, True, (0.05, 0.5)),
    "one-token-1-group-no-bias": (1, 3, 24, 5, 1, 4, False, NO_LIMIT),
}


def random_inputs(batch, heads, head_dim, d_state, groups, d_conv, with_bias, dt_limit, dtype=torch.float32, seed=0):
    """The op's arguments; A, D, dt_bias and the state fp32, the rest in the model dtype."""
    g = torch.Generator().manual_seed(seed)
    conv_dim = heads * head_dim + 2 * groups * d_state

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    return (
        randn(batch, conv_dim, d_conv).to(dtype),  # conv_window
        randn(batch, heads, head_dim, d_state),  # ssm_state
        randn(batch, conv_dim).to(dtype),  # xbc
        randn(batch, heads * head_dim, scale=2).to(dtype),  # z
        randn(batch, heads, scale=2).to(dtype),  # dt, raw
        randn(conv_dim, d_conv, scale=0.5).to(dtype),  # conv_weight
        randn(conv_dim).to(dtype) if with_bias else None,  # conv_bias
        -(torch.rand(heads, generator=g) * 3 + 0.1),  # A
        randn(heads),  # D
        randn(heads),  # dt_bias
        (1 + randn(heads * head_dim, scale=0.2)).to(dtype),  # norm_weight
        *dt_limit,
        1e-5,  # eps
    )


def run(choice, *inputs):
    with zoo.ops.kernel_choice(choice):
        return mamba2_decode_step(*inputs)


def three_op_chain(conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, *scalars):
    """What a captured decode graph runs without the region op: three zoo ops and the split between them."""
    dt_min, dt_max, eps = scalars
    batch, heads, head_dim, d_state = ssm_state.shape
    groups = (xbc.shape[1] - heads * head_dim) // (2 * d_state)
    conv_out, new_window = causal_conv1d_update(conv_window, xbc, conv_weight, conv_bias)
    x, B, C = conv_out.split([heads * head_dim, groups * d_state, groups * d_state], dim=-1)
    x, B, C = x.unflatten(-1, (heads, head_dim)), B.unflatten(-1, (groups, -1)), C.unflatten(-1, (groups, -1))
    y, new_state = ssd_state_update(ssm_state, x, dt, A, B, C, D, dt_bias, dt_min, dt_max)
    out = gated_rms_norm(y.flatten(-2).to(z.dtype), z, norm_weight, heads * head_dim // groups, eps)
    return out, new_window, new_state


@pytest.mark.parametrize("implementation", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(implementation, dtype, case):
    inputs = random_inputs(*case, dtype=dtype)
    out, new_window, new_state = run(implementation, *inputs)
    expected = mamba2_decode_step_ref(*inputs)
    batch, heads, head_dim, d_state, _, d_conv = case[:6]
    conv_dim = inputs[2].shape[1]
    assert out.shape == (batch, heads * head_dim) and out.dtype == dtype
    assert new_window.shape == (batch, conv_dim, d_conv) and new_window.dtype == dtype
    assert new_state.shape == (batch, heads, head_dim, d_state) and new_state.dtype == torch.float32
    assert_close(out, expected[0], dtype, msg="out")
    assert torch.equal(new_window, expected[1])  # raw inputs, shifted
    assert_close(new_state, expected[2], dtype, msg="ssm state")


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("case", [CASES["batch-3-2-groups-clamped"], CASES["one-token-1-group-no-bias"]], ids=str)
def test_equals_the_three_op_chain(implementation, case):
    """The fused op computes what causal_conv1d_update -> ssd_state_update -> gated_rms_norm compute, in fp32
    to fp32 tolerance, each side with the same kernel choice."""
    inputs = random_inputs(*case)
    fused = run(implementation, *inputs)
    with zoo.ops.kernel_choice(implementation):
        chain = three_op_chain(*inputs)
    for name, actual, expected in zip(("out", "conv window", "ssm state"), fused, chain, strict=True):
        assert_close(actual, expected, torch.float32, msg=name)


def test_reference_in_bf16_rounds_as_the_chain():
    inputs = random_inputs(*CASES["batch-3-1-group-kernel-3"], dtype=torch.bfloat16)
    with zoo.ops.kernel_choice("reference"):
        chain = three_op_chain(*inputs)
    for actual, expected in zip(mamba2_decode_step_ref(*inputs), chain, strict=True):
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
def test_is_the_mixer_decode_step(implementation):
    """The op on the mixer's in_proj split and parameters, then out_proj, is Mamba2Mixer.decode: checks the
    x / B / C channel layout and the norm's groups against the model code (2 groups, dt clamped)."""
    torch.manual_seed(0)
    mixer = Mamba2Mixer(d_model=32, n_heads=4, head_dim=12, d_state=6, n_groups=2, dt_limit=(0.01, 0.5))
    mixer.reset_parameters()
    with torch.no_grad():
        mixer.norm.weight.normal_(1, 0.2)
    shapes = mixer.state_shapes(batch=3)
    state = {name: torch.randn(shape, dtype=dtype or torch.float32) for name, (shape, dtype) in shapes.items()}
    u = torch.randn(3, 1, 32)
    with torch.no_grad():
        z, xbc, dt_raw = mixer.in_proj(u[:, 0]).split([mixer.d_inner, mixer.conv_dim, mixer.n_heads], dim=-1)
        args = (*mixer.conv_weights(), mixer.decay_rates(), mixer.D, mixer.dt_bias, mixer.norm.weight)
        out, new_window, new_state = run(
            implementation, state["conv"], state["ssm"], xbc, z, dt_raw, *args, *mixer.dt_limit, mixer.norm.eps
        )
        fused = mixer.out_proj(out)[:, None]
        expected = mixer.decode(u, state)  # updates state in place
    assert_close(fused, expected, torch.float32)
    assert_close(new_window, state["conv"], torch.float32)
    assert_close(new_state, state["ssm"], torch.float32)


def test_opcheck():
    for case in (CASES["batch-3-2-groups-clamped"], CASES["one-token-1-group-no-bias"]):
        torch.library.opcheck(torch.ops.zoo.mamba2_decode_step.default, random_inputs(*case))


def test_export_keeps_a_symbolic_batch():
    class Step(torch.nn.Module):
        def forward(self, conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight):
            tensors = (conv_window, ssm_state, xbc, z, dt, conv_weight, conv_bias, A, D, dt_bias, norm_weight)
            return mamba2_decode_step(*tensors, 0.0, float("inf"), 1e-5)

    inputs = random_inputs(*CASES["batch-3-2-groups-clamped"])[:11]
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = ({0: batch}, {0: batch}, {0: batch}, {0: batch}, {0: batch}, *[None] * 6)
    program = torch.export.export(Step(), inputs, dynamic_shapes=dynamic)
    (node,) = [n for n in program.graph.nodes if n.target is torch.ops.zoo.mamba2_decode_step.default]
    batch_sizes = [value.shape[0] for value in node.meta["val"]]  # one symbol, the input's batch, on every output
    assert all(isinstance(size, torch.SymInt) for size in batch_sizes) and len(set(map(str, batch_sizes))) == 1
    other = random_inputs(5, *CASES["batch-3-2-groups-clamped"][1:])[:11]
    for actual, expected in zip(program.module()(*other), mamba2_decode_step_ref(*other, *NO_LIMIT, 1e-5), strict=True):
        assert_close(actual, expected)


def test_bad_shapes_are_refused():
    inputs = list(random_inputs(*CASES["batch-3-2-groups-clamped"]))
    odd_xbc = list(inputs)
    odd_xbc[2] = inputs[2][:, :-1]  # conv_dim - h*p is not a multiple of 2 * d_state
    with pytest.raises(ValueError, match=r"xbc \(3, 183\) is not \(b, heads\*head_dim \+ 2\*groups\*d_state\)"):
        mamba2_decode_step(*odd_xbc)
    # 3 groups of B/C cannot serve 4 heads
    three_groups = random_inputs(3, 4, 40, 6, 3, 4, True, NO_LIMIT)
    with pytest.raises(ValueError, match="groups dividing heads=4"):
        mamba2_decode_step(*three_groups)
    short_weight = list(inputs)
    short_weight[10] = inputs[10][:-1]
    with pytest.raises(ValueError, match=r"norm_weight \(159,\) is not \(160,\)"):
        mamba2_decode_step(*short_weight)


def test_kernel_compiles_for_sm90():
    """compile_kernel needs Triton's compiler, not its interpreter: in a child process without TRITON_INTERPRET."""
    code = (
        "import json; from zoo.ops.triton_aot import compile_kernel;"
        "from zoo.ops.mamba2_decode_step.triton_kernel import TRITON_KERNELS;"
        "kernels = [compile_kernel(spec, 'mamba2_decode_step') for spec in TRITON_KERNELS];"
        "print(json.dumps([dict(k.summary(), sm90='.target sm_90' in k.ptx) for k in kernels]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    (kernel,) = json.loads(child.stdout.strip().splitlines()[-1])
    assert kernel["sm90"] and kernel["target"] == "sm_90" and kernel["ptx_bytes"] > 1000
    assert kernel["spill_bytes"] in (None, 0) and (kernel["registers"] is None or kernel["registers"] <= 255)
