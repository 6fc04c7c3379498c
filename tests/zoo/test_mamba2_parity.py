"""Mamba-2 and the hybrid against HF Mamba2ForCausalLM / NemotronHForCausalLM through zoo.from_pretrained,
and the mamba_ssm checkpoint layout."""

import json

import pytest
import torch

import zoo
from tests.conftest import assert_logits_match_hf, informative_weights
from zoo.errors import CheckpointError
from zoo.models.mamba2 import HybridConfig, Mamba2Config

CHUNK = 16
LENGTHS = [1, 7, CHUNK, 2 * CHUNK + 5]  # one token, inside a chunk, exactly a chunk, chunks + a remainder
MAMBA2 = {
    "groups-1": Mamba2Config(vocab_size=96, d_model=32, n_layers=2, d_state=8, mamba_head_dim=8, chunk_size=CHUNK),
    "groups-2-untied": Mamba2Config(
        vocab_size=96,
        d_model=32,
        n_layers=2,
        d_state=8,
        mamba_head_dim=8,
        n_groups=2,
        chunk_size=CHUNK,
        tie_embeddings=False,
    ),
}
HYBRID = HybridConfig(
    vocab_size=96,
    d_model=32,
    n_layers=5,
    pattern="M*-M-",
    d_state=8,
    mamba_head_dim=8,
    n_groups=2,
    chunk_size=CHUNK,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    max_seq_len=128,
)


@pytest.mark.parametrize("name", sorted(MAMBA2))
def test_mamba2_logits_match_hf(hf_checkpoint, name):
    config = MAMBA2[name]
    path, hf_model = hf_checkpoint(config)
    model = zoo.from_pretrained(path)
    assert model.config == config
    assert_logits_match_hf(model, hf_model, config.vocab_size, LENGTHS)


def test_hybrid_logits_match_nemotron_h(hf_checkpoint):
    path, hf_model = hf_checkpoint(HYBRID)
    model = zoo.from_pretrained(path)
    assert model.config == HYBRID and set(HYBRID.pattern) == {"M", "*", "-"}
    assert_logits_match_hf(model, hf_model, HYBRID.vocab_size, LENGTHS)


def write_mamba_ssm_checkpoint(path, hf_model, config, extra_objects=None):
    """The state-spaces layout: config.json with ssm_cfg and a pickled pytorch_model.bin."""
    path.mkdir()
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf_model.state_dict().items()}
    if extra_objects:
        state.update(extra_objects)
    torch.save(state, path / "pytorch_model.bin")
    ssm_cfg = {
        "layer": "Mamba2",
        "d_state": config.d_state,
        "headdim": config.mamba_head_dim,
        "ngroups": config.n_groups,
        "chunk_size": config.chunk_size,
    }
    (path / "config.json").write_text(
        json.dumps(
            {
                "d_model": config.d_model,
                "d_intermediate": 0,
                "n_layer": config.n_layers,
                "vocab_size": 90,
                "ssm_cfg": ssm_cfg,
                "attn_layer_idx": [],
                "rms_norm": True,
                "residual_in_fp32": True,
                "pad_vocab_size_multiple": 16,
                "tie_embeddings": config.tie_embeddings,
            }
        )
    )


def test_mamba_ssm_layout_loads_with_padded_vocab(hf_checkpoint, tmp_path):
    config = MAMBA2["groups-1"]  # vocab 96 = 90 padded to a multiple of 16
    _, hf_model = hf_checkpoint(config)
    write_mamba_ssm_checkpoint(tmp_path / "ssm", hf_model, config)
    model = zoo.from_pretrained(tmp_path / "ssm")
    assert model.config.vocab_size == 96
    assert_logits_match_hf(model, hf_model, config.vocab_size, LENGTHS)


class NotATensor:
    pass


def test_mamba_ssm_pickle_with_objects_is_refused(hf_checkpoint, tmp_path):
    config = MAMBA2["groups-1"]
    _, hf_model = hf_checkpoint(config)
    write_mamba_ssm_checkpoint(tmp_path / "ssm", hf_model, config, {"payload": NotATensor()})
    with pytest.raises(CheckpointError, match="weights-only"):
        zoo.from_pretrained(tmp_path / "ssm")  # the payload is an arbitrary object weights_only must not build


def test_unsupported_variants_are_refused(hf_checkpoint):
    path, _ = hf_checkpoint(HYBRID)
    raw = json.loads((path / "config.json").read_text())
    raw["layers_block_type"] = raw["layers_block_type"][:-1] + ["moe"]
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="MoE layers"):
        zoo.from_pretrained(path)


def test_hybrid_8b_pattern():
    config = zoo.get_config("mamba2-hybrid-8b")
    assert (config.count("M"), config.count("*"), config.count("-")) == (24, 4, 28)
    assert [i for i, kind in enumerate(config.pattern) if kind == "*"] == [10, 22, 33, 45]
    assert abs(config.num_params() - 8.66e9) < 0.02e9


class Prefill(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, lengths, state):
        return self.model.prefill(input_ids, lengths, state)


class DecodeStep(Prefill):
    def forward(self, tokens, positions, state):
        return self.model.decode_step(tokens, positions, state)


def zoo_nodes(program) -> list[str]:
    return [str(node.target) for node in program.graph.nodes if str(node.target).startswith("zoo.")]


@pytest.fixture(scope="module")
def tiny_programs():
    """mamba2-tiny (chunk 16) prefill and decode step exported once, with dynamic batch and length."""
    model = informative_weights(zoo.build("mamba2-tiny")).eval()
    state = model.init_state(2, 64)
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=1, max=1024)
    state_shapes = {name: {0: batch} for name in state}
    ids, lengths = torch.randint(0, 256, (2, 20)), torch.tensor([20, 7])
    prefill = torch.export.export(
        Prefill(model), (ids, lengths, state), dynamic_shapes=({0: batch, 1: length}, {0: batch}, state_shapes)
    )
    tokens, positions = torch.tensor([1, 2]), torch.tensor([20, 7])
    decode = torch.export.export(
        DecodeStep(model), (tokens, positions, state), dynamic_shapes=({0: batch}, {0: batch}, state_shapes)
    )
    return model, prefill.module(), decode.module(), zoo_nodes(prefill), zoo_nodes(decode)


def test_export_has_one_node_per_region_and_layer(tiny_programs):
    model, *_, prefill_nodes, decode_nodes = tiny_programs
    layers = model.config.pattern.count("M")
    assert prefill_nodes == ["zoo.causal_conv1d.default", "zoo.ssd_chunk_scan.default"] * layers
    assert decode_nodes == ["zoo.causal_conv1d_update.default", "zoo.ssd_state_update.default"] * layers


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [1, 15, 17, 3 * 16 + 5])
def test_exported_prefill_and_decode_equal_eager(tiny_programs, batch, length):
    """One exported program serves every length (one token, inside a chunk, across chunks) and batch."""
    model, prefill, decode, *_ = tiny_programs
    ids = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(length))
    lengths = torch.tensor([length, max(1, length - 6), 1][:batch])
    exported_state, eager_state = model.init_state(batch, 64), model.init_state(batch, 64)
    with torch.no_grad():
        logits, _ = prefill(ids, lengths, exported_state)
        expected, _ = model.prefill(ids, lengths, eager_state)
        torch.testing.assert_close(logits, expected)
        for name in eager_state:
            torch.testing.assert_close(exported_state[name], eager_state[name], msg=name)
        tokens = ids[:, 0]
        logits, _ = decode(tokens, lengths, exported_state)
        expected, _ = model.decode_step(tokens, lengths, eager_state)
    torch.testing.assert_close(logits, expected)
    for name in eager_state:
        torch.testing.assert_close(exported_state[name], eager_state[name], msg=name)


def test_cached_decode_matches_full_forward():
    """Prefill of a ragged batch, then decode steps through the ops, against one forward over each row."""
    model = informative_weights(zoo.build("mamba2-tiny")).eval()
    prompt_lengths, steps = [1, 17, 9], 5
    sequences = torch.randint(0, 256, (3, max(prompt_lengths) + steps), generator=torch.Generator().manual_seed(0))
    state = model.init_state(3, 64)
    with torch.no_grad():
        logits, _ = model.prefill(sequences, torch.tensor(prompt_lengths), state)
        for t in range(steps):
            positions = torch.tensor(prompt_lengths) + t
            for row, position in enumerate(positions.tolist()):
                expected = model(sequences[row : row + 1, :position])[0, -1]
                torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4, msg=f"row {row} step {t}")
            logits, _ = model.decode_step(sequences[torch.arange(3), positions], positions, state)
