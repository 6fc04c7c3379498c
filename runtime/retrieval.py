"""Re-ViLM's retriever: a faiss index of unit-norm CLIP image embeddings with the captions of the images.

- Search is by inner product (cosine similarity of unit vectors). Below EXACT_LIMIT vectors the index is
  exact (IndexFlatIP); from EXACT_LIMIT up it is an inverted file (IndexIVFFlat) of about sqrt(N) lists
  (a power of two), trained on a sample of TRAIN_PER_LIST vectors per list and searched over `nprobe`
  lists. Adding images later (`add`) never retrains: new vectors go to the lists of the trained centroids.
- Near-duplicates of the query (cosine similarity above `duplicate_threshold`, default 0.98) are dropped, so
  an image that is itself in the database does not retrieve its own caption (Re-ViLM filters them in
  training); the search asks for DUPLICATE_MARGIN more neighbours than k to make up for them.
- On disk an index is a directory: index.faiss (faiss's own format) and index.json (format version, the
  embedding model's id, dimension, metric, index type, nprobe, the captions and their token ids, the
  tokenizer that made them, the vocabulary size, and index.faiss's sha256), written to a temporary
  directory and renamed into place. Loading checks every field, the hash, and that index.faiss holds as
  many vectors as there are captions.
- Captions are tokenised when they are added: by a tokenizer.json when one is given, else by a
  byte-level fallback (each UTF-8 byte modulo the vocabulary size), for models with random weights.
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zoo.checkpoint import sha256_of
from zoo.errors import ZooError, require

FORMAT_VERSION = 1
KIND = "zoo image index"
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
EXACT_LIMIT = 50_000
TRAIN_PER_LIST = 40  # faiss warns below 39 training points per centroid
DEFAULT_NPROBE = 16
DUPLICATE_THRESHOLD = 0.98
DUPLICATE_MARGIN = 8
INDEX_TYPES = ("auto", "flat", "ivf")


class RetrievalError(ZooError):
    """An image index that is missing, corrupted, or does not fit the model or request."""


def faiss_module():
    return require("faiss", "retrieval")


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest sqrt(n), at least 1."""
    return max(1, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))


def byte_tokens(text: str, vocab_size: int) -> list[int]:
    return [b % vocab_size for b in text.encode("utf-8")]


def tokenize_captions(captions: list[str], vocab_size: int, tokenizer=None) -> list[list[int]]:
    if tokenizer is None:
        return [byte_tokens(c, vocab_size) for c in captions]
    return [tokenizer.encode(c).ids for c in captions]


def tokenizer_name(vocab_size: int, tokenizer_file: str | os.PathLike | None = None) -> str:
    if tokenizer_file is None:
        return f"bytes-mod-{vocab_size}"
    return "tokenizer.json:" + hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()[:16]


@dataclass
class Neighbor:
    id: int
    score: float
    caption: str
    caption_ids: list[int]


class ImageIndex:
    """Embeddings (N, dim) in a faiss index with `meta` (module docstring) beside them."""

    def __init__(self, index, meta: dict):
        self.index, self.meta = index, meta

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        captions: list[str],
        caption_ids: list[list[int]],
        model_id: str,
        tokenizer: str,
        vocab_size: int,
        index_type: str = "auto",
        nprobe: int = DEFAULT_NPROBE,
        seed: int = 0,
    ) -> "ImageIndex":
        faiss = faiss_module()
        embeddings = as_matrix(embeddings)
        n, dim = embeddings.shape
        if index_type not in INDEX_TYPES:
            raise RetrievalError(f"unknown index type {index_type!r}; known: {', '.join(INDEX_TYPES)}")
        if index_type == "auto":
            index_type = "flat" if n < EXACT_LIMIT else "ivf"
        if index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            lists = ivf_lists(n)
            if n < lists:
                raise RetrievalError(f"an IVF index of {lists} lists needs at least {lists} vectors to train, got {n}")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(seed).choice(n, size=min(n, lists * TRAIN_PER_LIST), replace=False)
            index.train(embeddings[np.sort(sample)])
            index.nprobe = min(nprobe, lists)
        meta = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "model_id": model_id,
            "dim": dim,
            "metric": "inner_product",
            "index_type": index_type,
            "nprobe": int(getattr(index, "nprobe", 0)),
            "tokenizer": tokenizer,
            "vocab_size": vocab_size,
            "captions": [],
            "caption_ids": [],
        }
        built = cls(index, meta)
        built.add(embeddings, captions, caption_ids)
        return built

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, embeddings: np.ndarray, captions: list[str], caption_ids: list[list[int]]) -> None:
        """More images and their captions, without retraining."""
        embeddings = as_matrix(embeddings)
        if not len(embeddings) == len(captions) == len(caption_ids):
            raise RetrievalError(f"{len(embeddings)} embeddings for {len(captions)} captions")
        if embeddings.shape[1] != self.meta["dim"]:
            raise RetrievalError(
                f"embeddings of dimension {embeddings.shape[1]} for an index of dimension {self.meta['dim']}"
            )
        self.index.add(embeddings)
        self.meta["captions"] += list(captions)
        self.meta["caption_ids"] += [list(ids) for ids in caption_ids]

    def search(
        self, queries: np.ndarray, k: int, duplicate_threshold: float = DUPLICATE_THRESHOLD
    ) -> list[list[Neighbor]]:
        """The k nearest captions of each query (best first), near-duplicates of the query left out."""
        if k < 1:
            raise RetrievalError(f"k must be >= 1, got {k}")
        queries = as_matrix(queries)
        if queries.shape[1] != self.meta["dim"]:
            raise RetrievalError(
                f"queries of dimension {queries.shape[1]} for an index of dimension {self.meta['dim']}"
            )
        scores, ids = self.index.search(queries, min(k + DUPLICATE_MARGIN, len(self)))
        results = []
        for row_scores, row_ids in zip(scores, ids):
            kept = [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0 and s <= duplicate_threshold]
            results.append([self.neighbor(i, s) for i, s in kept[:k]])
        return results

    def neighbor(self, i: int, score: float) -> Neighbor:
        return Neighbor(i, score, self.meta["captions"][i], self.meta["caption_ids"][i])

    def check_model(self, model_id: str, vocab_size: int, source: str = "the index") -> None:
        if self.meta["model_id"] != model_id:
            raise RetrievalError(
                f"{source} was built by another embedding model ({self.meta['model_id']}); this model's is {model_id}"
            )
        if self.meta["vocab_size"] != vocab_size:
            raise RetrievalError(
                f"{source} holds caption ids of a {self.meta['vocab_size']}-token vocabulary; "
                f"the model has {vocab_size}"
            )

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        from zoo.checkpoint import write_directory_atomically

        faiss = faiss_module()

        def write(tmp: Path):
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            meta = dict(self.meta, faiss_sha256=sha256_of(tmp / INDEX_FILE))
            (tmp / META_FILE).write_text(json.dumps(meta))

        return write_directory_atomically(
            path, write, (INDEX_FILE, META_FILE), overwrite, holds_ours=is_image_index, kind=KIND
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageIndex":
        faiss = faiss_module()
        path = Path(path)
        if not path.is_dir():
            raise RetrievalError(f"no such index directory: {path}")
        meta = read_meta(path)
        index_file = path / INDEX_FILE
        if not index_file.is_file():
            raise RetrievalError(f"{path} has no {INDEX_FILE}")
        if sha256_of(index_file) != meta["faiss_sha256"]:
            raise RetrievalError(f"{index_file} does not match the sha256 in {META_FILE}: truncated or changed")
        try:
            index = faiss.read_index(str(index_file))
        except RuntimeError as exc:
            raise RetrievalError(f"cannot read {index_file}: {str(exc).splitlines()[0]}") from exc
        if index.d != meta["dim"]:
            raise RetrievalError(f"{index_file} holds vectors of dimension {index.d}; {META_FILE} says {meta['dim']}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise RetrievalError(f"{index_file} does not use the inner-product metric")
        if not index.ntotal == len(meta["captions"]) == len(meta["caption_ids"]):
            raise RetrievalError(
                f"{index_file} holds {index.ntotal} vectors for {len(meta['captions'])} captions in {META_FILE}"
            )
        if meta["index_type"] == "ivf":
            index.nprobe = meta["nprobe"]
        return cls(index, meta)


META_FIELDS = {
    "kind": str,
    "format_version": int,
    "model_id": str,
    "dim": int,
    "metric": str,
    "index_type": str,
    "nprobe": int,
    "tokenizer": str,
    "vocab_size": int,
    "captions": list,
    "caption_ids": list,
    "faiss_sha256": str,
}


def read_meta(path: Path) -> dict:
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise RetrievalError(f"{path} is not an image index: it has no {META_FILE}")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RetrievalError(f"{meta_file} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise RetrievalError(f"{meta_file} does not describe a {KIND}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise RetrievalError(
            f"{meta_file} has format version {meta.get('format_version')!r}; this zoo reads {FORMAT_VERSION}"
        )
    for name, kind in META_FIELDS.items():
        if not isinstance(meta.get(name), kind):
            raise RetrievalError(f"{meta_file}: field {name!r} is missing or not a {kind.__name__}")
    if meta["metric"] != "inner_product" or meta["index_type"] not in ("flat", "ivf"):
        raise RetrievalError(f"{meta_file}: unknown metric {meta['metric']!r} or index type {meta['index_type']!r}")
    return meta


def is_image_index(path: Path) -> bool:
    try:
        read_meta(Path(path))
    except RetrievalError:
        return False
    return True


def as_matrix(embeddings) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise RetrievalError(f"embeddings must be a (count, dim) matrix, got shape {embeddings.shape}")
    return embeddings


# -- image directories, caption files and the model's embeddings ------------------------------------------


def read_captions(captions_file: str | os.PathLike, files: list[Path]) -> list[str]:
    """The caption of each image file, from a JSON object mapping file names to captions."""
    captions_file = Path(captions_file)
    try:
        mapping = json.loads(captions_file.read_text())
    except FileNotFoundError:
        raise RetrievalError(f"no such captions file: {captions_file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RetrievalError(f"{captions_file} is not valid JSON: {exc}") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise RetrievalError(f"{captions_file} must be a JSON object mapping image file names to caption strings")
    names = [f.name for f in files]
    missing = [n for n in names if n not in mapping]
    if missing:
        raise RetrievalError(f"{captions_file} has no caption for {len(missing)} image(s): {', '.join(missing[:5])}")
    extra = sorted(set(mapping) - set(names))
    if extra:
        raise RetrievalError(
            f"{captions_file} captions files that are not images of the directory: {', '.join(extra[:5])}"
        )
    return [mapping[n] for n in names]


def input_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where and in what dtype the embedder takes pixels: an nn.Module's parameters', or an artifact
    runner's (runtime.onnxruntime_runner: `device` and `dtype`, no parameters)."""
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters())
        return param.device, param.dtype
    return model.device, model.dtype


@torch.inference_mode()
def embed_images(model, pixels: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Unit-norm image embeddings (N, E) of pixels (N, 3, S, S) by the model's vision tower and projection
    (`model`: anything with `embed_image`, e.g. RevilmLM or the ONNX Runtime runner of its artifact)."""
    device, dtype = input_device_dtype(model)
    parts = [model.embed_image(pixels[i : i + batch].to(device, dtype)) for i in range(0, len(pixels), batch)]
    return torch.cat(parts).float().cpu().numpy()


def load_pixels(model, files: list) -> torch.Tensor:
    from runtime.images import load_image

    return torch.stack([load_image(f, model.config.vision.image_size) for f in files])


def check_embedding_model(model) -> None:
    """`model` (an nn.Module or an artifact runner) embeds images: `embed_image`, `embedding_model_id()`."""
    if not getattr(model, "takes_media", False) or not hasattr(model, "embed_image"):
        raise RetrievalError(f"the {model.config.family} family has no image encoder; use a revilm model")


def build_index(model, images_dir, captions_file, out, tokenizer_file=None, index_type="auto", overwrite=False):
    """`zoo index build`: embed every image of `images_dir`, index it with its caption, save to `out`."""
    from runtime.images import image_files
    from zoo.checkpoint import check_output_directory

    check_embedding_model(model)
    check_output_directory(out, overwrite, holds_ours=is_image_index, kind=KIND)
    files = image_files(images_dir)
    captions = read_captions(captions_file, files)
    tokenizer = load_tokenizer_file(tokenizer_file)
    vocab = model.config.vocab_size
    index = ImageIndex.build(
        embed_images(model, load_pixels(model, files)),
        captions,
        tokenize_captions(captions, vocab, tokenizer),
        model.embedding_model_id(),
        tokenizer_name(vocab, tokenizer_file),
        vocab,
        index_type,
    )
    index.save(out, overwrite)
    return index


def add_to_index(model, index_path, images_dir, captions_file, tokenizer_file=None):
    """`zoo index add`: more images and captions into an existing index (no retraining), saved in place."""
    from runtime.images import image_files

    check_embedding_model(model)
    index = ImageIndex.load(index_path)
    index.check_model(model.embedding_model_id(), model.config.vocab_size, str(index_path))
    vocab = model.config.vocab_size
    if tokenizer_name(vocab, tokenizer_file) != index.meta["tokenizer"]:
        raise RetrievalError(
            f"{index_path} tokenised its captions with {index.meta['tokenizer']}; give the same tokenizer"
        )
    files = image_files(images_dir)
    captions = read_captions(captions_file, files)
    caption_ids = tokenize_captions(captions, vocab, load_tokenizer_file(tokenizer_file))
    index.add(embed_images(model, load_pixels(model, files)), captions, caption_ids)
    index.save(index_path, overwrite=True)
    return index


def retrieve(model, index_path, pixels: torch.Tensor, k: int, duplicate_threshold: float = DUPLICATE_THRESHOLD):
    """The k nearest neighbours (list of Neighbor) of each image (N, 3, S, S) in the index at index_path.
    `model`: a RevilmLM, or the ONNX Runtime runner of its artifact (same embedding model id)."""
    check_embedding_model(model)
    index = ImageIndex.load(index_path)
    index.check_model(model.embedding_model_id(), model.config.vocab_size, str(index_path))
    return index.search(embed_images(model, pixels), k, duplicate_threshold)


def load_tokenizer_file(path):
    if path is None:
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a missing or malformed file
        raise RetrievalError(f"{path} is not a valid tokenizers file: {str(exc).splitlines()[0]}") from exc
