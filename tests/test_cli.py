import json

import pytest
from click.testing import CliRunner

from zoo.cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_every_command_has_help(run):
    assert run("--help").exit_code == 0
    for name, command in main.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert command.get_short_help_str() and "Usage: main " + name in result.output


def test_list_json(run):
    rows = json.loads(run("list", "--json").output)
    names = {r["name"] for r in rows}
    assert {"llama-tiny", "llama-small", "gpt-tiny", "gpt2-124m", "megatron-gpt-8.3b", "llama3-8b"} <= names
    assert all({"name", "family", "params"} <= set(r) and isinstance(r["params"], int) for r in rows)
    table = run("list").output.splitlines()
    assert table[0].split()[:3] == ["name", "family", "params"] and len(table) == len(rows) + 1


def test_info(run):
    out = json.loads(run("info", "llama2-7b", "--json").output)
    assert out["layers"] == 32 and out["params"] == 6738415616
    assert out["cache_bytes_per_token_fp16"] == 2 * 32 * 32 * 128 * 2  # K and V, layers, heads, head dim
    assert out["cache_bytes_per_token_fp32"] == 2 * out["cache_bytes_per_token_fp16"]
    text = run("info", "gpt-tiny").output
    assert "layers" in text and "cache_bytes_per_token_fp16" in text


def test_unknown_model_is_a_clear_error(run):
    for command in (["info", "llama2-7"], ["generate", "gpt2-124", "--prompt-ids", "1"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1
        assert "unknown model" in result.output and "did you mean" in result.output
        assert "Traceback" not in result.output


def test_generate_json_batch_matches_engine(run):
    import zoo
    from runtime import Engine

    out = json.loads(
        run(
            "generate", "llama-tiny", "--prompt-ids", "1,2,3", "--prompt-ids", "9", "--max-new-tokens", 6, "--json"
        ).output
    )
    assert out["tokens"] == Engine.from_model(zoo.build("llama-tiny")).generate([[1, 2, 3], [9]], 6)
    assert out["ttft_s"] > 0 and out["tpot_s"] > 0


def test_generate_errors(run):
    result = CliRunner().invoke(main, ["generate", "llama-tiny", "--prompt-ids", "1,x"])
    assert result.exit_code == 2 and "not a comma-separated list of integers" in result.output
    result = CliRunner().invoke(main, ["generate", "llama-tiny", "--prompt-ids", ",".join(["1"] * 300)])
    assert result.exit_code == 1 and "longer than the model's context of 256" in result.output
    result = CliRunner().invoke(main, ["generate", "llama-tiny", "--prompt", "hello"])
    assert result.exit_code == 1 and "tokenizer.json" in result.output


def test_generate_with_text_prompt(run, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    import zoo

    words = ["<unk>", "the", "cat", "sat", "on", "mat", "a", "dog"] + [f"w{i}" for i in range(248)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    zoo.save_pretrained(zoo.build("llama-tiny"), tmp_path / "ckpt")
    tokenizer.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    out = json.loads(
        run("generate", tmp_path / "ckpt", "--prompt", "the cat sat", "--max-new-tokens", 5, "--json").output
    )
    assert out["prompts"] == [[1, 2, 3]]
    assert out["text"] == [tokenizer.decode(out["tokens"][0])]
    assert len(out["text"][0].split()) == 5
