"""A revilm artifact generates from images on ONNX Runtime: `zoo export` writes the media encoder graph
(export/media.py) into the artifact and its manifest; `Engine.load(DIR)` (runtime/onnxruntime_runner.py) runs
it and gives the torch engine's greedy tokens, with and without retrieved captions; the runner embeds images
for the retriever under the torch model's embedding id, so `zoo run DIR --image --index` equals `zoo generate`
on the checkpoint it was exported from; an artifact without its media graph, and a revilm artifact on the
tensorrt backend, are refused in one line. One export (`--format tensorrt`, which holds the ONNX Runtime
artifact and the TensorRT-ready graphs) is shared by the module."""

import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

import zoo
from export.artifact import ArtifactError, verify
from runtime import Engine
from runtime.images import load_image
from runtime.retrieval import retrieve
from tests.conftest import informative_weights
from tests.test_bad_inputs import assert_error, cli
from zoo.errors import ZooError

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9], [40, 41, 42]]  # different lengths, one image each
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def media_artifact(tmp_path_factory):
    """(informative revilm-tiny, its checkpoint, its artifact by `zoo export`, an index by `zoo index build`,
    the image files)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    (root / "db").mkdir()
    rng = np.random.default_rng(0)
    captions = {}
    for i in range(6):
        pattern = i % 3
        pixels = np.zeros((40, 40, 3))
        pixels[:, :, pattern] = 200
        pixels[:: pattern + 2] = 50
        pixels = np.clip(pixels + rng.normal(0, 40, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "db" / f"im{i}.png")
        captions[f"im{i}.png"] = f"pattern {pattern} picture {i}"
    (root / "captions.json").write_text(json.dumps(captions))
    model = informative_weights(zoo.build("revilm-tiny")).eval()
    zoo.save_pretrained(model, root / "model")
    exported = cli("export", root / "model", "--unfused", "-o", root / "art")  # unfused: the faster export
    assert exported.exit_code == 0, exported.output
    assert "revilm prefill.onnx, decode.onnx and media.onnx (unfused)" in exported.output
    built = cli("index", "build", "--images", root / "db", "--captions", root / "captions.json", "-o", root / "idx",
                "--model", root / "model")  # fmt: skip
    assert built.exit_code == 0, built.output
    images = [root / "db" / f"im{i}.png" for i in (0, 1, 5)]
    return model, root / "model", root / "art", root / "idx", images


def test_the_artifact_holds_the_media_graph_in_its_manifest(media_artifact):
    model, _, path, _, _ = media_artifact
    manifest = verify(path)  # media.onnx is hashed like the other graphs
    media = manifest["media"]
    assert media["file"] == "media.onnx" and "media.onnx" in manifest["files"]
    assert media["embedding_model_id"] == model.embedding_model_id()
    assert [r["name"] for r in media["inputs"]] == ["pixel_values", "caption_ids", "caption_lengths"]
    state_inputs = {r["name"] for r in manifest["graphs"]["decode"]["inputs"] if r["state"] is not None}
    media_outputs = [r["name"] for r in media["outputs"]]
    assert media_outputs[0] == "image_embedding" and set(media_outputs[1:]) <= state_inputs
    assert {"state.media_k.0", "state.retrieved_v.1", "state.retrieved_mask.0"} <= set(media_outputs)
    assert all(r["shape"][0] == "batch" for r in media["inputs"] + media["outputs"])


def test_onnxruntime_generates_the_torch_engines_tokens_from_images(media_artifact):
    model, _, path, _, images = media_artifact
    engine, reference = Engine.load(path), Engine(model)
    assert engine.backend == "onnxruntime" and engine.runner.takes_media
    pixels = torch.stack([load_image(f, 32) for f in images])
    retrieved = [[[5, 6, 7, 8, 9, 10], [1, 2]], [[200, 201, 202]], []]  # 2, 1 and no captions
    tokens = engine.generate(PROMPTS, NEW_TOKENS, images=pixels, retrieved=retrieved)
    assert tokens == reference.generate(PROMPTS, NEW_TOKENS, images=pixels, retrieved=retrieved)
    without = engine.generate(PROMPTS, NEW_TOKENS, images=pixels)  # None captions: an empty retrieval context
    assert without == reference.generate(PROMPTS, NEW_TOKENS, images=pixels)
    assert without != tokens  # the captions reach the artifact's decode
    other_images = engine.generate(PROMPTS, NEW_TOKENS, images=pixels.flip(0), retrieved=retrieved)
    assert other_images == reference.generate(PROMPTS, NEW_TOKENS, images=pixels.flip(0), retrieved=retrieved)
    assert other_images != tokens  # the images reach it too
    with torch.no_grad():
        torch.testing.assert_close(engine.runner.embed_image(pixels), model.embed_image(pixels), atol=1e-5, rtol=1e-4)
    assert engine.runner.embedding_model_id() == model.embedding_model_id()
    with pytest.raises(ZooError, match="needs one image per prompt"):
        engine.generate(PROMPTS, 2)


def test_zoo_run_with_an_index_equals_zoo_generate(media_artifact):
    model, checkpoint, path, index, images = media_artifact
    options = [arg for p in PROMPTS for arg in ("--prompt-ids", ",".join(map(str, p)))]
    options += ["--max-new-tokens", NEW_TOKENS, "--json", *(arg for f in images for arg in ("--image", f))]
    for extra in ([], ["--k", 1]):
        ran = cli("run", path, *options, "--index", index, *extra)
        assert ran.exit_code == 0, ran.output
        generated = cli("generate", checkpoint, *options, "--index", index, *extra)
        assert generated.exit_code == 0, generated.output
        assert json.loads(ran.output)["tokens"] == json.loads(generated.output)["tokens"], extra
    # the artifact's runner retrieves what the torch model does (same embedding, same index)
    pixels = torch.stack([load_image(f, 32) for f in images])
    runner = Engine.load(path).runner
    assert [[n.id for n in row] for row in retrieve(runner, index, pixels, 2)] == [
        [n.id for n in row] for row in retrieve(model, index, pixels, 2)
    ]


def test_zoo_run_media_errors(media_artifact, tmp_path):
    _, _, path, index, images = media_artifact
    run = ["run", path, "--prompt-ids", "1,2"]
    assert_error(cli(*run), "needs one image per prompt")
    assert_error(cli(*run, "--image", images[0]), "give --index")
    assert_error(cli(*run, "--image", images[0], "--index", index, "--k", 3), "reads at most 2")
    assert_error(cli(*run, "--image", images[0], "--index", tmp_path / "none"), "no such index directory")
    usage = cli(*run, "--index", index)
    assert usage.exit_code == 2 and "give --image too" in usage.output
    # an index of another embedding model: revilm-tiny's seeded random weights, not the exported checkpoint's
    db = index.parent / "db"
    other = tmp_path / "other"
    assert (
        cli("index", "build", "--images", db, "--captions", index.parent / "captions.json", "-o", other).exit_code == 0
    )
    assert_error(cli(*run, "--image", images[0], "--index", other), "another embedding model")


def edited_copy(path, destination, edit):
    copy = shutil.copytree(path, destination)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("media"), "without its media encoder graph"),
        (lambda m: m["media"].update(file="prefill.onnx.bak"), "is not one of its files"),
        (lambda m: m["media"]["outputs"].pop(), "does not map pixel_values"),
        (lambda m: m["media"].pop("embedding_model_id"), "lacks its embedding_model_id"),
    ],
)
def test_an_artifact_without_a_whole_media_graph_is_refused(media_artifact, tmp_path, edit, message):
    copy = edited_copy(media_artifact[2], tmp_path / "copy", edit)
    with pytest.raises(ArtifactError, match=message) as error:
        Engine.load(copy)
    assert "\n" not in str(error.value)
    assert_error(cli("run", copy, "--prompt-ids", "1", "--image", media_artifact[4][0]), message)


def test_the_tensorrt_runner_refuses_a_media_artifact(media_artifact, monkeypatch, tmp_path):
    """Before it would point to the engine build: the media graph has no TensorRT path. (The section is
    `zoo export --format tensorrt`'s before its engines are built; that export of revilm-tiny is the same
    export_onnx plus TensorRT-ready copies, too slow to repeat here.)"""
    from runtime.tensorrt_runner import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # its later checks are reached
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    path = edited_copy(media_artifact[2], tmp_path / "trt", lambda m: m.update(tensorrt={"engines": None}))
    with pytest.raises(ArtifactError, match="media encoder graph runs on the onnxruntime backend only") as error:
        TensorRTRunner(path)
    assert "\n" not in str(error.value)
