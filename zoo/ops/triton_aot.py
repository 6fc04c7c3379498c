"""Ahead-of-time compilation of the ops' Triton kernels for a GPU that this machine need not have.

Every op folder's `triton_kernel.py` lists its kernels as `TRITON_KERNELS = [KernelSpec(...), ...]`: the
jitted function, its signature (Triton type strings: "*fp32", "i32", "fp32", "constexpr", ...) and the
constexpr values of one configuration. `compile_kernel` compiles one for sm_90 (H100) with
`triton.compile(..., target=GPUTarget("cuda", 90, 32))`, which needs no GPU, and reads the resource use
(registers, spills, shared memory) from ptxas. This proves a kernel compiles for Hopper, gives `zoo
kernels` its table, and gives a TensorRT plugin its PTX.
"""

import importlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

OP_FOLDERS_FILE = Path(__file__).parent


@dataclass(frozen=True)
class KernelSpec:
    name: str  # unique across the library, e.g. "ssd_state_update"
    fn: object  # the @triton.jit function
    signature: dict[str, str]
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2


@dataclass
class CompiledKernel:
    name: str
    op: str
    ptx: str
    ptx_bytes: int
    kernel_name: str
    num_warps: int
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None
    target: str

    def summary(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "ptx"}


def _jit_function(fn):
    """The JITFunction of `fn`. Under TRITON_INTERPRET=1, @triton.jit returns an InterpretedFunction, which
    triton.compile cannot take; its Python function is rewrapped (kernels must not call other jit functions)."""
    from triton.runtime.jit import JITFunction

    return fn if isinstance(fn, JITFunction) else JITFunction(fn.fn)


def ptxas_resources(ptx: str, arch: str = "sm_90a") -> tuple[int | None, int | None]:
    """(registers, spill stores + loads in bytes) that ptxas reports for `ptx`, or (None, None) when no
    ptxas shipped with triton accepts it (triton emits PTX for its newest bundled ptxas, "ptxas-blackwell")."""
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        for ptxas in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas"):
            if not ptxas.is_file():
                continue
            out = subprocess.run(
                [str(ptxas), f"-arch={arch}", "-v", str(src), "-o", os.devnull], capture_output=True, text=True
            )
            if out.returncode == 0:
                report = out.stdout + out.stderr
                registers = re.search(r"Used (\d+) registers", report)
                spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
                return (int(registers.group(1)) if registers else None), (sum(spills) if spills else None)
    return None, None


def compile_kernel(spec: KernelSpec, op: str, capability: int = 90) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget

    source = triton.compiler.ASTSource(fn=_jit_function(spec.fn), signature=spec.signature, constexprs=spec.constexprs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, "enable_fp_fusion": True}
    kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    ptx = kernel.asm["ptx"]
    registers, spills = ptxas_resources(ptx, f"sm_{capability}a")
    return CompiledKernel(
        name=spec.name,
        op=op,
        ptx=ptx,
        ptx_bytes=len(ptx.encode()),
        kernel_name=kernel.metadata.name,
        num_warps=kernel.metadata.num_warps,
        shared_bytes=kernel.metadata.shared,
        registers=registers,
        spill_bytes=spills,
        target=f"sm_{capability}",
    )


def op_folders() -> list[str]:
    """The op folders of zoo/ops (each a package with a triton_kernel module)."""
    return sorted(p.name for p in OP_FOLDERS_FILE.iterdir() if (p / "triton_kernel.py").is_file())


def kernel_specs() -> list[tuple[str, KernelSpec]]:
    """(op folder, spec) for every Triton kernel of the library."""
    specs = []
    for folder in op_folders():
        module = importlib.import_module(f"zoo.ops.{folder}.triton_kernel")
        specs += [(folder, spec) for spec in module.TRITON_KERNELS]
    return specs
