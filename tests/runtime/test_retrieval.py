"""The image index (runtime/retrieval.py) and the `zoo index` / `zoo generate --image --index` commands."""

import json

import numpy as np
import pytest
import torch

import zoo
from runtime.retrieval import INDEX_FILE, META_FILE, ImageIndex, RetrievalError
from tests.conftest import informative_weights
from tests.test_bad_inputs import assert_error, cli


def clustered(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    x = centers[np.arange(n) % clusters] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_index(embeddings, index_type="auto", model_id="m:1"):
    captions = [f"caption {i}" for i in range(len(embeddings))]
    return ImageIndex.build(embeddings, captions, [[i % 256] for i in range(len(embeddings))], model_id,
                            "bytes-mod-256", 256, index_type)  # fmt: skip


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_planted_neighbours_are_retrieved_and_near_duplicates_dropped(index_type):
    base = clustered(4000, 32, 50)
    index = make_index(base, index_type)
    assert index.meta["index_type"] == index_type
    rng = np.random.default_rng(1)
    queries = base[:20] + 0.02 * rng.normal(size=(20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = (base @ queries.T).T.argsort(axis=1)[:, ::-1][:, :4]
    found = index.search(queries, 4, duplicate_threshold=1.01)
    assert np.mean([len(set(exact[q]) & {n.id for n in found[q]}) / 4 for q in range(20)]) >= 0.95
    # the query that is itself in the database: not retrieved under the default threshold
    own = index.search(base[:5], 4)
    assert all(n.id != q and n.score <= 0.98 for q, row in enumerate(own) for n in row)
    assert all(len(row) == 4 and row[0].id % 50 == q for q, row in enumerate(own))  # neighbours of its cluster


def test_auto_picks_exact_below_the_limit_and_add_does_not_retrain(tmp_path):
    assert make_index(clustered(100, 16, 4)).meta["index_type"] == "flat"
    index = make_index(clustered(3000, 16, 8), "ivf")
    centroids = index.index.quantizer.reconstruct_n(0, index.index.nlist).copy()
    planted = clustered(3, 16, 3, seed=9)
    index.add(planted, ["new a", "new b", "new c"], [[1], [2], [3]])
    assert np.array_equal(centroids, index.index.quantizer.reconstruct_n(0, index.index.nlist))
    index.save(tmp_path / "idx")
    loaded = ImageIndex.load(tmp_path / "idx")
    assert len(loaded) == 3003 and loaded.meta["nprobe"] == index.index.nprobe
    assert [row[0].caption for row in loaded.search(planted, 1, duplicate_threshold=1.01)] == [
        "new a",
        "new b",
        "new c",
    ]


def edit_meta(path, **changes):
    meta = json.loads((path / META_FILE).read_text())
    meta.update(changes)
    (path / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / INDEX_FILE).write_bytes((p / INDEX_FILE).read_bytes()[:100]), "truncated or changed"),
        (lambda p: (p / META_FILE).write_text("{not json"), "not valid JSON"),
        (lambda p: edit_meta(p, format_version=7), "format version 7"),
        (lambda p: edit_meta(p, dim=64), "dimension 16"),
        (lambda p: edit_meta(p, captions=["one"]), "holds 100 vectors for 1 captions"),
        (lambda p: edit_meta(p, model_id=5), "'model_id' is missing"),
        (lambda p: (p / INDEX_FILE).unlink(), "has no index.faiss"),
    ],
)
def test_a_damaged_index_is_a_one_line_error(tmp_path, damage, message):
    make_index(clustered(100, 16, 4)).save(tmp_path / "idx")
    damage(tmp_path / "idx")
    with pytest.raises(RetrievalError, match=message) as error:
        ImageIndex.load(tmp_path / "idx")
    assert "\n" not in str(error.value)


def test_an_index_of_another_model_or_dimension_is_refused(tmp_path):
    index = make_index(clustered(100, 16, 4), model_id="clip:aaaa")
    with pytest.raises(RetrievalError, match="another embedding model"):
        index.check_model("clip:bbbb", 256)
    with pytest.raises(RetrievalError, match="256-token vocabulary"):
        index.check_model("clip:aaaa", 1000)
    with pytest.raises(RetrievalError, match="dimension 8"):
        index.search(np.zeros((1, 8), np.float32), 2)
    with pytest.raises(RetrievalError, match="no such index directory"):
        ImageIndex.load(tmp_path / "missing")


# -- the CLI, on a small database of PNGs written here -----------------------------------------------------


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """9 noisy images of 3 patterns with captions, a revilm-tiny checkpoint with informative weights."""
    from PIL import Image

    root = tmp_path_factory.mktemp("retrieval")
    rng = np.random.default_rng(0)
    (root / "db").mkdir()
    (root / "more").mkdir()
    captions, more = {}, {}
    for i in range(10):
        pattern = i % 3
        pixels = np.zeros((40, 40, 3))
        pixels[:, :, pattern] = 200
        pixels[:: pattern + 2] = 50
        pixels = np.clip(pixels + rng.normal(0, 40, pixels.shape), 0, 255).astype(np.uint8)
        folder, table = (root / "more", more) if i == 9 else (root / "db", captions)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
        table[f"im{i}.png"] = f"pattern {pattern} picture {i}"
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "more.json").write_text(json.dumps(more))
    (root / "broken.png").write_bytes(b"not a png")
    zoo.save_pretrained(informative_weights(zoo.build("revilm-tiny")), root / "model")
    return root


def test_index_build_query_add_and_generate(database, tmp_path):
    model = database / "model"
    out = tmp_path / "idx"
    result = cli("index", "build", "--images", database / "db", "--captions", database / "captions.json", "-o", out,
                 "--model", model)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "indexed 9 images (flat" in result.output
    query = ["index", "query", out, "--image", database / "db" / "im0.png", "--model", model, "--json"]
    rows = json.loads(cli(*query, "--k", 2, "--duplicate-threshold", 0.999).output)
    assert {r["caption"] for r in rows} == {"pattern 0 picture 3", "pattern 0 picture 6"}  # itself left out
    assert "picture 0" in json.loads(cli(*query, "--k", 1, "--duplicate-threshold", 1).output)[0]["caption"]
    text = cli(*query[:-1], "--k", 1, "--duplicate-threshold", 0.999).output
    assert "pattern 0 picture" in text
    assert cli("index", "query", out, "--image", database / "more" / "im9.png", "--model", model, "--json",
               "--duplicate-threshold", 1).output.count("pattern 0")  # fmt: skip
    added = cli(
        "index", "add", out, "--images", database / "more", "--captions", database / "more.json", "--model", model
    )
    assert added.exit_code == 0 and "now holds 10 images" in added.output
    rows = json.loads(
        cli(*query[:4], database / "more" / "im9.png", *query[5:], "--k", 1, "--duplicate-threshold", 1).output
    )
    assert rows[0]["caption"] == "pattern 0 picture 9"

    generate = ["generate", model, "--prompt-ids", "1,2,3", "--prompt-ids", "4,5", "--max-new-tokens", 3, "--json"]
    images = ["--image", database / "db" / "im0.png", "--image", database / "db" / "im1.png"]
    result = cli(*generate, *images, "--index", out)
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.output)["tokens"]
    # the same as the engine given the captions the index retrieves (the default near-duplicate filter)
    from runtime import Engine
    from runtime.images import load_image
    from runtime.retrieval import retrieve

    loaded = zoo.load_model(str(model))
    pixels = torch.stack([load_image(database / "db" / f"im{i}.png", 32) for i in (0, 1)])
    retrieved = [[n.caption_ids for n in row] for row in retrieve(loaded, out, pixels, 2)]
    assert tokens == Engine(loaded).generate([[1, 2, 3], [4, 5]], 3, images=pixels, retrieved=retrieved)
    one_image = json.loads(cli(*generate, images[0], images[1], "--index", out, "--k", 1).output)["tokens"]
    assert one_image != tokens


def test_index_and_image_errors(database, tmp_path):
    model = database / "model"
    out = tmp_path / "idx"
    db = ["--images", database / "db", "--captions", database / "captions.json"]
    assert cli("index", "build", *db, "-o", out, "--model", model).exit_code == 0
    image = ["--image", database / "db" / "im0.png"]

    assert_error(cli("index", "query", tmp_path / "none", *image, "--model", model), "no such index directory")
    assert_error(
        cli("index", "query", out, *image), "another embedding model"
    )  # seeded random weights, not the checkpoint
    assert_error(
        cli("index", "query", out, "--image", database / "broken.png", "--model", model), "cannot read", "as an image"
    )
    assert_error(cli("index", "query", out, "--image", tmp_path / "nope.png", "--model", model), "no such image file")
    assert_error(cli("index", "query", out, *image, "--model", "llama-tiny"), "no image encoder")
    assert_error(cli("index", "build", *db, "-o", out, "--model", model), "pass --overwrite")
    more = ["--captions", database / "more.json"]
    assert_error(
        cli("index", "build", "--images", database / "db", *more, "-o", tmp_path / "x", "--model", model),
        "no caption for 9 image(s)",
    )
    assert_error(cli("index", "build", "--images", tmp_path, *more, "-o", tmp_path / "y"), "holds no image files")
    assert_error(cli("index", "add", out, *db[:2], "--captions", database / "captions.json"), "another embedding model")

    generate = ["generate", model, "--prompt-ids", "1,2"]
    assert_error(cli(*generate, *image), "give --index")
    assert_error(cli(*generate), "needs one image per prompt")
    assert_error(cli(*generate, *image, "--index", tmp_path / "none"), "no such index directory")
    assert_error(cli(*generate, "--image", database / "broken.png", "--index", out), "as an image")
    assert_error(cli(*generate, *image, "--index", out, "--k", 3), "reads at most 2")
    assert_error(cli("generate", "llama-tiny", "--prompt-ids", "1,2", *image), "reads text only")
    usage = cli(*generate, "--index", out)
    assert usage.exit_code == 2 and "give --image too" in usage.output
    usage = cli(*generate, *image, *image, *image, "--index", out)
    assert usage.exit_code == 2 and "one --image per prompt" in usage.output


def test_index_commands_have_help():
    for command in (["index"], ["index", "build"], ["index", "add"], ["index", "query"]):
        result = cli(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
