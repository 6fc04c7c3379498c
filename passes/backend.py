"""The zoo's torch.compile backend: zoo graph passes on the Dynamo graph, then inductor."""

import logging

import torch

from passes.matvec_pass import matvec_pass

log = logging.getLogger(__name__)


def zoo_inductor(gm: torch.fx.GraphModule, example_inputs, **inductor_options):
    """torch.compile(fn, backend=zoo_inductor). Records the pass hits on gm.meta["zoo_pass_hits"]."""
    from torch._inductor.compile_fx import compile_fx

    hits = {"matvec_pass": matvec_pass(gm)}
    gm.meta["zoo_pass_hits"] = hits
    log.info("zoo passes on a graph of %d nodes: %s", len(gm.graph.nodes), hits)
    return compile_fx(gm, example_inputs, config_patches=inductor_options or None)
