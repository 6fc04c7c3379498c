"""The pass manager: runs an ordered list of passes over a captured program, logs the order, times each
pass, counts its hits and the graph's ops before and after, can disable a pass by name, and in debug mode
checks after every pass that the program still computes what the captured one did.

A pass is either a graph pass, `fn(gm: torch.fx.GraphModule) -> int | dict[str, int]` that rewrites the
program's graph module in place and returns its hits (a dict: hits per kind), or a program pass,
`fn(program) -> (new program, hits)` (decomposition, ATen lowering). Hits are what a test asserts: a
fusion that silently does not fire shows as 0.
"""

import copy
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from zoo.errors import ZooError

log = logging.getLogger("zoo.passes")

DEBUG_ATOL, DEBUG_RTOL = 1e-4, 1e-3  # fp32: a pass may reorder sums, nothing more


@dataclass(frozen=True)
class Pass:
    name: str
    run: object
    on_program: bool = False  # True: fn(program) -> (program, hits); False: fn(graph module) -> hits


@dataclass
class PassRecord:
    name: str
    enabled: bool
    hits: int = 0
    hits_by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    max_abs_diff: float | None = None  # debug mode: the largest output change against the captured program

    def to_dict(self) -> dict:
        return dict(vars(self))


def op_counts(program: torch.export.ExportedProgram) -> dict[str, int]:
    """call_function targets of the graph and how often each occurs (e.g. {"aten.mm.default": 16, ...})."""
    return dict(Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function"))


def _outputs(program, args) -> list[torch.Tensor]:
    with torch.no_grad():
        out = program.module()(*copy.deepcopy(args))
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


class PassManager:
    def __init__(self, passes: list[Pass], disabled: tuple[str, ...] | list[str] = (), debug: bool = False):
        names = [p.name for p in passes]
        unknown = sorted(set(disabled) - set(names))
        if unknown:
            raise ZooError(f"unknown pass(es) {', '.join(unknown)}; the passes are: {', '.join(names)}")
        self.passes, self.disabled, self.debug = passes, set(disabled), debug

    def run(self, program: torch.export.ExportedProgram, example_args: tuple | None = None):
        """(the rewritten program, one PassRecord per pass in order). Debug mode needs `example_args`."""
        log.info(
            "passes, in order: %s",
            ", ".join(p.name + (" (disabled)" if p.name in self.disabled else "") for p in self.passes),
        )
        if self.debug and example_args is None:
            raise ZooError("debug mode checks numerics and needs the captured example inputs")
        expected = _outputs(program, example_args) if self.debug else None
        records = []
        for p in self.passes:
            record = PassRecord(p.name, enabled=p.name not in self.disabled, ops_before=op_counts(program))
            if record.enabled:
                start = time.perf_counter()
                if p.on_program:
                    program, hits = p.run(program)
                else:
                    hits = p.run(program.graph_module)
                    program.graph_module.recompile()
                record.seconds = time.perf_counter() - start
                record.hits_by_kind = dict(hits) if isinstance(hits, dict) else {}
                record.hits = sum(hits.values()) if isinstance(hits, dict) else int(hits)
                if self.debug:
                    record.max_abs_diff = self._check(p.name, expected, _outputs(program, example_args))
            record.ops_after = op_counts(program)
            log.info("%s: %d hits in %.3f s", p.name, record.hits, record.seconds)
            records.append(record)
        return program, records

    @staticmethod
    def _check(name: str, expected: list[torch.Tensor], actual: list[torch.Tensor]) -> float:
        worst = 0.0
        for want, got in zip(expected, actual, strict=True):
            if want.is_floating_point():
                diff = (got.float() - want.float()).abs()
                if not torch.all(diff <= DEBUG_ATOL + DEBUG_RTOL * want.float().abs()):
                    raise ZooError(f"pass {name} changed the program's outputs (max abs diff {diff.max():.3g})")
                worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
            elif not torch.equal(got, want):
                raise ZooError(f"pass {name} changed an integer output of the program")
        return worst


def lower_to_core_aten(program: torch.export.ExportedProgram):
    """The program in core ATen ops (torch.export's default decompositions); zoo ops stay single nodes."""
    return program.run_decompositions(), 0


def fused_pipeline() -> list[Pass]:
    """The passes that take a captured program to its fused form."""
    from passes.idiom_fusion_pass import IDIOMS
    from passes.kernel_select_pass import kernel_select_pass
    from passes.region_growth_pass import GROWTHS

    return [
        Pass("core_aten", lower_to_core_aten, on_program=True),
        *(Pass(f"idiom_fusion.{name}", fuse) for name, fuse in IDIOMS.items()),  # in IDIOMS' order
        *(Pass(f"region_growth.{name}", grow) for name, grow in GROWTHS.items()),
        Pass("kernel_select", kernel_select_pass),
    ]


def unfused_pipeline() -> list[Pass]:
    """Every zoo op back to standard ATen ops (the graph an exporter with standard operators needs)."""
    from passes.decompose_pass import decompose_pass

    return [Pass("decompose", decompose_pass, on_program=True)]
