"""The media encoder of a model that reads images (revilm) as its own ONNX graph: what `encode_media` computes
once per request, beside the prefill and decode graphs that export/onnx.py writes for every family.

Inputs: `pixel_values` (batch, 3, S, S) float, `caption_ids` (batch, K, Lc) int64, `caption_lengths`
(batch, K) int64. Outputs: `image_embedding` (batch, E), the unit-norm CLIP embedding the retriever searches
with, then the state entries encode_media fills, under their graph names (`state.media_k.0`, ...,
`state.retrieved_mask.0`): exactly the state inputs of the prefill and decode graphs.

Two writers share `media_graph`: `export_media_onnx` (a standalone file) and export.onnx.export_onnx, which
puts the graph in the artifact as MEDIA_FILE and records it in the manifest's top-level "media" object
(file, inputs, outputs, and the model's `embedding_model_id()`, so that an image index built from the torch
model is recognised for the artifact). `media_section` is what an artifact's runner checks it with.
"""

import os
from pathlib import Path

import torch
from torch import nn

from export.onnx_ops import OnnxExportError, root_cause
from zoo.checkpoint import check_output_file, write_file_atomically
from zoo.errors import OutputError

PRODUCER = "graph-zoo media encoder"  # metadata that marks a file this module wrote
MEDIA_PHASE = "media"  # the artifact's media.onnx
INPUT_NAMES = ("pixel_values", "caption_ids", "caption_lengths")
EMBEDDING = "image_embedding"
MEDIA_STATE_PREFIXES = ("media_", "retrieved_")  # the state entries encode_media fills


def media_entries(model: nn.Module) -> list:
    """The state entries encode_media fills: the media graph's outputs after the embedding."""
    return [e for e in model.state_spec() if e.name.startswith(MEDIA_STATE_PREFIXES)]


class MediaEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.entries = media_entries(model)

    def forward(self, pixel_values, caption_ids, caption_lengths):
        latents = self.model.media_latents(pixel_values)
        kv = self.model.context_keys_values(latents, caption_ids, caption_lengths)
        return (self.model.embed_image(pixel_values), *(kv[e.key] for e in self.entries))


def is_media_graph(path: Path) -> bool:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises DecodeError and others for a file that is not a model
        return False
    return any(p.key == "producer" and p.value == PRODUCER for p in proto.metadata_props)


def media_graph(model: nn.Module):
    """The media encoder of `model` as an ONNX ModelProto (dynamic batch), its values named as the module
    docstring says and its metadata marking it as ours."""
    import onnx
    import onnx_ir as ir

    encoder = MediaEncoder(model.eval()).eval()
    c = model.config
    size = c.vision.image_size
    args = (
        torch.randn(2, 3, size, size, dtype=next(model.parameters()).dtype),
        torch.randint(0, c.vocab_size, (2, c.n_neighbors, c.neighbor_length)),
        torch.tensor([[c.neighbor_length, 3], [1, 0]])[:, : c.n_neighbors],
    )
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with torch.no_grad():
            program = torch.export.export(encoder, args, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    except Exception as exc:  # the exporter raises many kinds; report the cause on one line
        raise OnnxExportError(f"ONNX export of the media encoder failed: {root_cause(exc)}") from exc
    from export.onnx import rename_symbols

    graph = onnx_program.model.graph
    rename_symbols(graph, {graph.inputs[0].shape[0].value: "batch"})  # the one dynamic axis
    names = [*INPUT_NAMES, EMBEDDING, *(e.qualified_name for e in encoder.entries)]
    for value, name in zip([*graph.inputs, *graph.outputs], names, strict=True):
        value.name = name
        value.shape = ir.Shape(["batch", *value.shape[1:]])
    proto = ir.serde.serialize_model(onnx_program.model)
    onnx.helper.set_model_props(proto, {"producer": PRODUCER, "family": c.family})
    return proto


def export_media_onnx(model: nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the media encoder graph of `model` to `path` (atomically; an existing file only with
    `overwrite`, and only one this function wrote)."""
    import onnx

    path = check_output_file(path, holds_ours=is_media_graph, kind="zoo media graph")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already holds a zoo media graph; pass overwrite=True to replace it")
    proto = media_graph(model)

    def write(tmp: Path):
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)

    return write_file_atomically(path, write)


def reads_media(manifest: dict) -> bool:
    """Whether an artifact's manifest is of a model that reads images (it has a media graph, or should)."""
    from zoo.registry import FAMILIES

    family = FAMILIES.get(manifest.get("family"))
    return manifest.get("media") is not None or getattr(getattr(family, "model_cls", None), "takes_media", False)


def media_section(path: Path, manifest: dict, spec: list) -> dict | None:
    """The manifest's "media" object, checked against the state spec (None for a text-only artifact). An
    artifact of a model that reads images without one is refused: a runner would otherwise generate with
    zero media state."""
    from export.artifact import ArtifactError

    if not reads_media(manifest):
        return None
    section = manifest.get("media")
    if not isinstance(section, dict):
        raise ArtifactError(
            f"{path} is a {manifest['family']} artifact without its media encoder graph (exported by an older "
            "graph-zoo, or its manifest was changed): export it again with `zoo export`"
        )
    if section.get("file") not in manifest["files"]:
        raise ArtifactError(f"{path}: the manifest's media graph {section.get('file')!r} is not one of its files")
    inputs = [r.get("name") for r in section.get("inputs", []) if isinstance(r, dict)]
    outputs = [r.get("name") for r in section.get("outputs", []) if isinstance(r, dict)]
    wanted = [EMBEDDING, *(e.qualified_name for e in spec if e.name.startswith(MEDIA_STATE_PREFIXES))]
    if inputs != list(INPUT_NAMES) or sorted(outputs) != sorted(wanted):
        raise ArtifactError(
            f"{path}: the manifest's media graph does not map {', '.join(INPUT_NAMES)} to {EMBEDDING} and the "
            "media state entries of its decode graph"
        )
    if not isinstance(section.get("embedding_model_id"), str):
        raise ArtifactError(f"{path}: the manifest's media graph lacks its embedding_model_id")
    return section
