import json
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.errors import UnknownModelError


def test_unknown_name_lists_close_names():
    with pytest.raises(UnknownModelError) as err:
        zoo.build("lama-tiny")
    assert "unknown model 'lama-tiny'" in str(err.value)
    assert "llama-tiny" in str(err.value)


def test_every_named_size_has_a_consistent_config():
    rows = zoo.list_models()
    assert {r["name"] for r in rows} == set(zoo.model_names())
    families = {r["family"] for r in rows}
    assert {"llama", "gpt"} <= families
    for family in families:
        assert any(r["name"].endswith("-tiny") and r["family"] == family for r in rows), family
    by_name = {r["name"]: r for r in rows}
    # published sizes, as a check on the analytic parameter count
    assert abs(by_name["llama2-7b"]["params"] - 6.74e9) < 0.01e9
    assert abs(by_name["llama3-8b"]["params"] - 8.03e9) < 0.01e9
    assert abs(by_name["gpt2-124m"]["params"] - 124.44e6) < 0.01e6
    assert 30e6 <= by_name["llama-small"]["params"] <= 60e6


@pytest.mark.parametrize(
    "name",
    ["llama-tiny", "gpt-tiny", "llama-small", "mamba2-tiny", "mamba2-hybrid-tiny", "moe-tiny", "dmc-tiny"]
    + ["t5-tiny", "hourglass-tiny", "dynpool-tiny"],
)
def test_analytic_param_count_equals_built_model(name):
    model = zoo.build(name)
    assert sum(p.numel() for p in model.parameters()) == model.config.num_params()


def test_build_is_seeded():
    a, b, c = zoo.build("llama-tiny", seed=1), zoo.build("llama-tiny", seed=1), zoo.build("llama-tiny", seed=2)
    assert torch.equal(a.layers[0].attn.wq.weight, b.layers[0].attn.wq.weight)
    assert not torch.equal(a.layers[0].attn.wq.weight, c.layers[0].attn.wq.weight)
    assert torch.equal(a.layers[1].mlp_norm.weight, torch.ones(64))


def test_import_zoo_does_not_import_heavy_dependencies():
    code = (
        "import sys, zoo, runtime, passes, export, zoo.cli\n"
        "heavy = {'triton', 'onnx', 'onnxruntime', 'transformers', 'modelopt', 'tensorrt', 'torch_tensorrt'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []
