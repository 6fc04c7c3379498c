"""The zoo's torch.compile backend: zoo graph passes on the Dynamo graph, then inductor (the default target)
or torch-tensorrt (`options={"target": "tensorrt"}`, passes/tensorrt_backend.py).

    torch.compile(fn, backend="zoo")                                   # matvec, prepack, then inductor
    torch.compile(fn, backend="zoo", options={"max_autotune": True})   # the other options patch inductor's config
    torch.compile(fn, backend="zoo", options={"target": "tensorrt", "min_block_size": 1})
"""

import logging

import torch

from passes.matvec_pass import matvec_pass
from passes.prepack_linear_pass import prepack_linear_pass
from zoo.errors import ZooError

log = logging.getLogger(__name__)

TARGETS = ("inductor", "tensorrt")


def parse_inductor_options(options: dict, mode: str | None = None) -> dict:
    """inductor config patches: those of torch.compile's `mode`, then `options` (keys of torch._inductor.config)."""
    import torch._inductor
    import torch._inductor.config

    from passes.tensorrt_backend import unknown_option_error

    valid = torch._inductor.config.get_config_copy()
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise unknown_option_error("inductor", unknown[0], ["target", "(any key of torch._inductor.config)"], valid)
    mode_patches = torch._inductor.list_mode_options(mode) if mode else {}  # mode=None lists every mode
    return {**mode_patches, **options}


def zoo_inductor(gm: torch.fx.GraphModule, example_inputs, mode: str | None = None, options: dict | None = None):
    """torch.compile(fn, backend=zoo_inductor[, mode=..., options=...]); the "zoo" backend's entry point.

    options["target"] picks the compiler after the zoo passes (TARGETS; default "inductor"). For inductor
    the passes are the matvec rewrite (one-row linear layers) and the oneDNN prepack of the others; their
    hits are recorded on gm.meta["zoo_pass_hits"]."""
    options = dict(options or {})
    target = options.pop("target", "inductor")
    if target not in TARGETS:
        raise ZooError(f"unknown target {target!r} of the zoo backend; valid targets: {', '.join(TARGETS)}")
    if target == "tensorrt":
        from passes.tensorrt_backend import parse_tensorrt_options, tensorrt_backend

        if mode not in (None, "default"):
            raise ZooError(f"mode={mode!r} is an inductor setting; the tensorrt target takes torch-tensorrt options")
        return tensorrt_backend(gm, example_inputs, parse_tensorrt_options(options))
    from torch._inductor.compile_fx import compile_fx

    config_patches = parse_inductor_options(options, mode)
    hits = {"matvec_pass": matvec_pass(gm)}
    hits["prepack_linear_pass"] = prepack_linear_pass(gm, example_inputs)
    gm.meta["zoo_pass_hits"] = hits
    log.info("zoo passes on a graph of %d nodes: %s", len(gm.graph.nodes), hits)
    return compile_fx(gm, example_inputs, config_patches=config_patches or None)
