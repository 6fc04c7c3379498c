"""The dynamic-pooling transformer: pooling arithmetic by hand, relative attention against its formula,
causality, cached incremental decode against the full forward (ragged batches, every boundary mode), the
training forward's shapes and gradients, and capture with dynamic shapes."""

import dataclasses
import math

import pytest
import torch

import zoo
from passes.capture import capture
from tests.conftest import informative_weights
from zoo import registry
from zoo.models.dynpool import SIZES, DynPoolConfig, DynPoolLM
from zoo.models.dynpool.model import RelativeAttention, sinusoid
from zoo.nn.pooling import binomial_prior_loss, gumbel_sigmoid_boundaries, segment_means, upsample

TINY = SIZES["dynpool-tiny"]
STRIDE = 3
SPACE_IDS = (2, 5, 8, 11)  # "whitespace" tokens of the tests' small alphabet
ALPHABET = 12  # test tokens are drawn from 0..11, so that the whitespace ids occur often
CONFIGS = {
    "fixed": dataclasses.replace(TINY, boundaries="fixed", fixed_stride=STRIDE),
    "whitespace": dataclasses.replace(TINY, boundaries="whitespace", boundary_token_ids=SPACE_IDS),
    "predictor": TINY,
}


def make_model(mode: str, seed: int = 3) -> DynPoolLM:
    torch.manual_seed(seed)
    model = informative_weights(DynPoolLM(CONFIGS[mode]), seed=seed).eval()
    if model.boundary_predictor is not None:
        with torch.no_grad():  # predictor logits well away from 0, so both paths take the same decisions
            predictor = model.boundary_predictor
            predictor.w_out.weight.mul_(20.0)
            predictor.w_out.bias -= predictor(model.pre_stack(tokens(4, 32, seed=99))).median()  # about half close
    return model


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, ALPHABET, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_family_sizes_and_param_counts():
    family = registry.FAMILIES["dynpool"]
    assert family.model_cls is DynPoolLM and "dynpool-tiny" in family.sizes
    assert isinstance(zoo.build("dynpool-tiny"), DynPoolLM)
    assert {"dynpool-small", "dynpool-small-fixed", "dynpool-small-whitespace"} <= set(SIZES)
    for mode in CONFIGS:
        model = make_model(mode)
        assert sum(p.numel() for p in model.parameters()) == model.config.num_params(), mode
    small = SIZES["dynpool-small"]
    assert (small.n_pre, small.n_short, small.n_post, small.d_model, small.n_layers) == (2, 8, 2, 512, 12)
    assert 40e6 < small.num_params() < 45e6


def test_bad_config_is_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown boundaries 'entropy'"):
        dataclasses.replace(TINY, boundaries="entropy")
    with pytest.raises(ValueError, match="fixed_stride"):
        dataclasses.replace(TINY, boundaries="fixed", fixed_stride=0)


def test_pooling_arithmetic_by_hand():
    """Boundaries every 3 tokens (b_t = [t mod 3 == 0]) over 8 tokens: segments {0}, {1,2,3}, {4,5,6} are
    closed, {7} is open; token t reads [null; segments][inclusive cumsum of b]."""
    h = torch.randn(1, 8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = (torch.arange(8) % 3 == 0)[None]
    expected = torch.stack([h[0, 0], h[0, 1:4].mean(0), h[0, 4:7].mean(0)])[None]
    torch.testing.assert_close(segment_means(h, b, 3).double(), expected)
    spare = segment_means(h, b, 4).double()  # a spare slot holds the open segment, which no token reads
    torch.testing.assert_close(spare[:, :3], expected)
    torch.testing.assert_close(spare[0, 3], h[0, 7])
    shortened = torch.arange(5, dtype=torch.float64)[None, :, None]  # [null, s0, s1, s2, s3] as 0..4
    assert upsample(shortened, b)[0, :, 0].tolist() == [1, 1, 1, 2, 2, 2, 3, 3]


@pytest.mark.parametrize("length", [8, 9])  # a trailing open segment, and a length that is a multiple of 3
def test_fixed_model_equals_hand_pooling(length):
    """The model's forward in fixed mode equals its stacks around pooling written out by hand."""
    model = make_model("fixed")
    ids = tokens(2, length)
    with torch.no_grad():
        h = model.pre_stack(ids)
        starts = list(range(1, length, STRIDE))  # segment 0 is token 0; segment s > 0 is tokens 3s-2..3s
        groups = [[0]] + [list(range(s, s + STRIDE)) for s in starts if s + STRIDE - 1 < length]  # closed ones
        means = [h[:, g].mean(1) for g in groups]
        pooled = torch.stack([model.null_group.expand(2, -1), *means], 1)
        tables = model.position_tables(model.short_layers, pooled.shape[1], ids.device)
        shortened = model.run_stack(model.short_layers, model.down_norm(pooled), tables)
        closed_through = [sum(1 for g in groups if g[-1] <= t) for t in range(length)]
        y = shortened[:, closed_through] + h
        y = model.run_stack(model.post_layers, y, model.position_tables(model.post_layers, length, ids.device))
        torch.testing.assert_close(model(ids), model.lm_head(y), atol=1e-5, rtol=1e-5)


def test_relative_attention_equals_its_formula():
    """score(i, j) = ((q_i + u).k_j + (q_i + v).(W_r pe(i - j) + b_r)) / sqrt(D) over j <= i."""
    torch.manual_seed(0)
    d, H, D, L = 16, 2, 8, 6
    attn = informative_weights(RelativeAttention(d, H, D))
    u, v = torch.randn(H, D), torch.randn(H, D)
    x = torch.randn(1, L, d)
    with torch.no_grad():
        out, *_ = attn(x, u, v, attn.position_table(L, x.device))
        q, k, values = attn.qkv(x)[0].view(L, 3, H, D).unbind(1)
        expected = torch.zeros(L, H, D)
        for i in range(L):
            for head in range(H):
                scores = []
                for j in range(i + 1):
                    r = attn.r_net(sinusoid(torch.tensor(float(i - j)), d)).view(H, D)[head]
                    scores.append(((q[i, head] + u[head]) @ k[j, head] + (q[i, head] + v[head]) @ r) / math.sqrt(D))
                probs = torch.stack(scores).softmax(0)
                expected[i, head] = probs @ values[: i + 1, head]
        torch.testing.assert_close(out[0], attn.out(expected.reshape(L, H * D)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_causality(mode):
    """Changing tokens from position p on leaves the logits before p unchanged (<= 1e-6), in the eval
    forward and in the training forward (same Gumbel noise)."""
    model = make_model(mode)
    ids = tokens(2, 16)
    changed = ids.clone()
    changed[:, 9:] = (changed[:, 9:] + 5) % ALPHABET
    with torch.no_grad():
        assert (model(ids)[:, :9] - model(changed)[:, :9]).abs().max() <= 1e-6
        assert (model(ids)[:, 9:] - model(changed)[:, 9:]).abs().max() > 1e-3
        train = [model.forward_train(x, torch.Generator().manual_seed(3)).logits for x in (ids, changed)]
    assert (train[0][:, :9] - train[1][:, :9]).abs().max() <= 1e-6


@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_cached_decode_matches_full_forward(mode):
    """Prefill of a ragged batch (prompt lengths 1, 6 = 2 strides and 8), then decode steps that close and
    open segments, against one full forward over each row's tokens."""
    model = make_model(mode)
    prompt_lengths, steps = [1, 6, 8], 7
    sequences = tokens(3, max(prompt_lengths) + steps, seed=4)
    state = model.init_state(3, max(prompt_lengths) + steps)
    with torch.no_grad():
        h = model.pre_stack(sequences)
        boundaries, logits_b = model.hard_boundaries(sequences, h)
        fraction = boundaries.float().mean().item()
        assert 0.1 < fraction < 0.9, fraction  # rows close and leave open segments
        if logits_b is not None:
            assert logits_b.abs().min() > 1e-2  # no decision near the threshold
        logits, _ = model.prefill(sequences[:, : max(prompt_lengths)], torch.tensor(prompt_lengths), state)
        for t in range(steps):
            positions = torch.tensor(prompt_lengths) + t
            closed = [int(boundaries[row, :position].sum()) for row, position in enumerate(positions.tolist())]
            assert state[f"segments{model.config.n_pre}"].tolist() == closed, f"step {t}"
            for row, position in enumerate(positions.tolist()):
                expected = model(sequences[row : row + 1, :position])[0, -1]
                torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4, msg=f"row {row} step {t}")
            logits, _ = model.decode_step(sequences[torch.arange(3), positions], positions, state)


def test_state_spec_and_bytes():
    model = make_model("predictor")
    state = model.init_state(2, 16)
    spec = model.state_spec()
    assert [e.key for e in spec] == list(state) and spec[0].key == "k0"
    for entry in spec:
        assert state[entry.key].shape == entry.concrete_shape(2, 16)
        assert state[entry.key].dtype == entry.torch_dtype(torch.float32)
    assert {"null_k1", "null_v2", "segments1", "open_sum1", "open_count1", "latest1", "rel3"} <= set(state)
    assert "null_k0" not in state and "null_k3" not in state  # only shortened layers hold the null group
    assert model.config.state_bytes(2, 16, torch.float32) == sum(t.nbytes for t in state.values())


def test_training_forward_shapes_and_gradient_flow():
    """Gradients of the LM loss alone reach the boundary predictor (straight-through boundaries through the
    pooling weights); the binomial prior loss equals -log Binomial(k; L, prior) / L."""
    model = make_model("predictor").train()
    ids = tokens(2, 13)
    out = model.forward_train(ids, torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, 13, TINY.vocab_size) and out.boundaries.shape == (2, 13)
    assert set(out.boundaries.detach().unique().tolist()) <= {0.0, 1.0}
    binomial = torch.distributions.Binomial(13, probs=torch.tensor(TINY.prior))
    expected_loss = -binomial.log_prob(out.boundaries.detach().sum(-1)).mean() / 13
    torch.testing.assert_close(out.boundary_loss.detach(), expected_loss)
    lm_loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    lm_loss.backward(retain_graph=True)
    predictor = model.boundary_predictor
    assert predictor.w_up.weight.grad.abs().sum() > 0 and predictor.w_out.weight.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    model.zero_grad()
    out.boundary_loss.backward()
    assert predictor.w_out.weight.grad.abs().sum() > 0


def test_rule_boundaries_train_without_a_boundary_loss():
    model = make_model("fixed").train()
    out = model.forward_train(tokens(2, 10))
    assert out.boundary_loss.item() == 0.0
    assert out.boundaries[0].tolist() == [float(t % STRIDE == 0) for t in range(10)]
    out.logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gumbel_boundaries_are_hard_with_straight_through_gradients():
    logits = torch.tensor([-30.0, 30.0, 0.3, -0.2], requires_grad=True)
    boundaries = gumbel_sigmoid_boundaries(logits, 0.5, torch.Generator().manual_seed(0))
    assert boundaries.tolist()[:2] == [0.0, 1.0] and set(boundaries.tolist()) <= {0.0, 1.0}
    boundaries.sum().backward()
    assert logits.grad[2:].abs().min() > 0  # the soft sample's gradient
    assert binomial_prior_loss(torch.zeros(1, 10), 0.2) > binomial_prior_loss(torch.tensor([[1.0, 1] + [0] * 8]), 0.2)


@pytest.mark.parametrize("mode", ["fixed", "predictor"])
def test_capture_prefill_and_decode_equal_eager(mode):
    """passes.capture with dynamic batch, prompt and cache lengths; the programs run other sizes."""
    model = make_model(mode)
    programs = {phase: capture(model, phase).module() for phase in ("prefill", "decode")}
    ids, lengths = tokens(3, 7, seed=2), torch.tensor([7, 2, 4])
    exported, eager = model.init_state(3, 13), model.init_state(3, 13)
    with torch.no_grad():
        torch.testing.assert_close(
            programs["prefill"](ids, lengths, exported)[0], model.prefill(ids, lengths, eager)[0]
        )
        next_tokens = ids[:, 0]
        actual = programs["decode"](next_tokens, lengths, exported)[0]
        torch.testing.assert_close(actual, model.decode_step(next_tokens, lengths, eager)[0])
    for key in eager:
        torch.testing.assert_close(exported[key], eager[key], msg=key)


def test_config_round_trips_through_a_dict():
    config = CONFIGS["whitespace"]
    assert DynPoolConfig.from_dict(config.to_dict() | {"boundary_token_ids": list(SPACE_IDS)}) == config


@pytest.mark.slow
def test_unfused_onnx_graphs_run_in_onnxruntime():
    """The captured prefill and decode step exported to standard ONNX ops equal eager in ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    from export.onnx import export_graph

    model = make_model("predictor")
    sessions = {
        phase: ort.InferenceSession(export_graph(model, phase, fused=False)["proto"].SerializeToString())
        for phase in ("prefill", "decode")
    }
    spec = model.state_spec()
    ids, lengths = tokens(3, 7, seed=5), torch.tensor([7, 2, 4])
    state = model.init_state(3, 13)

    def run(phase, first, second, state_arrays):
        session = sessions[phase]
        feeds = dict(zip([i.name for i in session.get_inputs()][:2], (first.numpy(), second.numpy())))
        outputs = session.run(None, feeds | {e.qualified_name: state_arrays[e.key] for e in spec})
        named = dict(zip([o.name for o in session.get_outputs()], outputs))
        return torch.from_numpy(named["logits"]), {e.key: named[f"new_{e.qualified_name}"] for e in spec}

    with torch.no_grad():
        actual, arrays = run("prefill", ids, lengths, {key: t.numpy().copy() for key, t in state.items()})
        torch.testing.assert_close(actual, model.prefill(ids, lengths, state)[0], atol=1e-5, rtol=1e-5)
        for step in range(3):
            positions = lengths + step
            actual, arrays = run("decode", ids[:, step], positions, arrays)
            expected = model.decode_step(ids[:, step], positions, state)[0]
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=f"step {step}")
