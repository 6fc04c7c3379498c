"""Which implementation a zoo op runs: an explicit choice, never a silent switch on the environment.

Choices:
- "reference": the op's `*_ref` (plain PyTorch; the oracle);
- "cpu": the op's fast CPU implementation (also used for tensors on other devices that have no Triton);
- "triton": the op's Triton kernel: on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set
  before triton was imported (Triton's interpreter; slow, for tests);
- "auto" (default): "triton" for CUDA tensors when triton is installed, else "cpu".

The choice is global with optional per-op overrides (`set_kernel_choice("cpu", ops=["ssd_chunk_scan"])`),
read when an op runs (ops are opaque to capture, so a captured graph runs whatever is chosen). Each
(op, implementation) pair is logged once, at INFO level, the first time it runs.
"""

import contextlib
import importlib.util
import logging
import os

import torch

from zoo.errors import ZooError

log = logging.getLogger("zoo.ops")

KERNEL_CHOICES = ("auto", "reference", "cpu", "triton")
IMPLEMENTATIONS = ("reference", "cpu", "triton")

_default = "auto"
_per_op: dict[str, str] = {}
_logged: set[tuple[str, str]] = set()


def _check(choice: str) -> str:
    if choice not in KERNEL_CHOICES:
        raise ZooError(f"unknown kernel choice {choice!r}; known: {', '.join(KERNEL_CHOICES)}")
    return choice


def set_kernel_choice(choice: str, ops: list[str] | tuple[str, ...] | None = None) -> None:
    """Set the kernel choice for every op (ops=None) or for the named ops only."""
    global _default
    _check(choice)
    if ops is None:
        _default = choice
        _per_op.clear()
    else:
        for op in ops:
            _per_op[op] = choice


def get_kernel_choice(op: str | None = None) -> str:
    return _per_op.get(op, _default) if op is not None else _default


@contextlib.contextmanager
def kernel_choice(choice: str, ops: list[str] | tuple[str, ...] | None = None):
    """`with kernel_choice("reference"): ...` sets the choice for the block and restores it after."""
    global _default
    saved = (_default, dict(_per_op))
    set_kernel_choice(choice, ops)
    try:
        yield
    finally:
        _default = saved[0]
        _per_op.clear()
        _per_op.update(saved[1])


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def implementation_for(op: str, device: torch.device) -> str:
    """The implementation `op` runs for tensors on `device`: "reference", "cpu" or "triton"."""
    choice = get_kernel_choice(op)
    if choice == "auto":
        choice = "triton" if device.type == "cuda" and triton_available() else "cpu"
    if choice == "triton":
        if not triton_available():
            raise ZooError(f"kernel choice 'triton' for zoo::{op}, but triton is not installed: pip install triton")
        if device.type != "cuda" and not triton_interpreted():
            raise ZooError(
                f"kernel choice 'triton' for zoo::{op} on {device.type} tensors needs a CUDA device, or "
                "TRITON_INTERPRET=1 set before triton is imported (Triton's interpreter, for tests)"
            )
    if (op, choice) not in _logged:
        _logged.add((op, choice))
        log.info("zoo::%s runs its %s implementation on %s", op, choice, device.type)
    return choice


def dispatch(op: str, device: torch.device, reference, cpu, triton):
    """The function of the chosen implementation. `triton` is a zero-argument callable returning the
    kernel launcher, so that triton is imported only when that implementation runs."""
    chosen = implementation_for(op, device)
    if chosen == "reference":
        return reference
    if chosen == "cpu":
        return cpu
    return triton()
