"""The ops of the library, found in their folders: each `zoo/ops/<folder>/op.py` registers one or more
`zoo::<name>` custom ops, and the folder's `reference.py` holds `<name>_ref` for each of them."""

import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

OPS_DIR = Path(__file__).parent
OP_VERSION = 1  # the schema version an op carries into exported artifacts; bumped when a signature changes


@dataclass(frozen=True)
class ZooOp:
    name: str  # "ssd_chunk_scan": the op is torch.ops.zoo.<name>
    folder: str  # its folder under zoo/ops
    reference: object  # <name>_ref: the plain-torch body, with the op's signature
    version: int = OP_VERSION

    @property
    def overload(self) -> torch._ops.OpOverload:
        return getattr(torch.ops.zoo, self.name).default

    @property
    def schema(self) -> str:
        return str(self.overload._schema)

    @property
    def op_type(self) -> str:
        """The op name in CamelCase: the op type of its ONNX node and the name of its TensorRT plugin."""
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def plugin_id(self) -> str:
        """The id of its TensorRT plugin (zoo.ops.tensorrt_plugin), namespace "zoo"."""
        return f"zoo::{self.op_type}"


def op_folders() -> list[str]:
    return sorted(p.name for p in OPS_DIR.iterdir() if (p / "op.py").is_file())


@cache
def zoo_ops() -> dict[str, ZooOp]:
    """Every op of the library by name (imports each op module, which registers the op with torch)."""
    ops = {}
    for folder in op_folders():
        importlib.import_module(f"zoo.ops.{folder}.op")
        reference = importlib.import_module(f"zoo.ops.{folder}.reference")
        for attribute in dir(reference):
            name, function = attribute.removesuffix("_ref"), getattr(reference, attribute)
            defined_here = getattr(function, "__module__", None) == reference.__name__  # not an imported one
            if attribute.endswith("_ref") and defined_here and hasattr(torch.ops.zoo, name):
                ops[name] = ZooOp(name, folder, function)
    return ops


def op_of_node(node: torch.fx.Node) -> ZooOp | None:
    """The library op a graph node calls, or None."""
    if node.op != "call_function" or getattr(node.target, "namespace", None) != "zoo":
        return None
    return zoo_ops().get(node.target.name().split("::")[1].split(".")[0])
