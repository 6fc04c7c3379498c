"""Ahead-of-time compilation of the ops' Triton kernels for a GPU that this machine need not have.

Every op folder's `triton_kernel.py` lists its kernels as `TRITON_KERNELS = [KernelSpec(...), ...]`: the
jitted function, its signature (Triton type strings: "*fp32", "i32", "fp32", "constexpr", ...) and the
constexpr values of one configuration. `compile_kernel` compiles one for sm_90 (H100) with
`triton.compile(..., target=GPUTarget("cuda", 90, 32))`, which needs no GPU, and reads the resource use
(registers, spills, shared memory) from ptxas. This proves a kernel compiles for Hopper, gives `zoo
kernels` its table, and gives a TensorRT plugin its PTX.
"""

import importlib
import json
import os
import re
import subprocess
import sys
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
    """The JITFunction of `fn` (compile_kernel runs only where TRITON_INTERPRET is off: compile_all)."""
    from triton.runtime.jit import JITFunction

    if not isinstance(fn, JITFunction):
        raise RuntimeError("Triton kernels compile ahead of time only without TRITON_INTERPRET=1 (use compile_all)")
    return fn


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


def _compile_specs(capability: int) -> list[dict]:
    results = []
    for op, spec in kernel_specs():
        try:
            results.append({"ok": True, **compile_kernel(spec, op, capability).summary()})
        except Exception as exc:  # a compiler error of one kernel is reported, the others still compile
            results.append({"ok": False, "name": spec.name, "op": op, "error": str(exc).splitlines()[0]})
    return results


def compile_all(capability: int = 90) -> list[dict]:
    """Compile every kernel of the library for sm_<capability>: one summary dict per kernel ("ok", and the
    CompiledKernel fields or an "error"). Under Triton's interpreter (TRITON_INTERPRET=1, as in the tests)
    @triton.jit and triton.language's own jitted helpers (tl.sum, tl.cumsum, ...) are interpreted functions
    that triton.compile cannot take, so the compilation then runs in a child process without it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return _compile_specs(capability)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, "-m", "zoo.ops.triton_aot", str(capability)], env=env, capture_output=True, text=True
    )
    if child.returncode != 0:
        raise RuntimeError(f"kernel compilation failed: {(child.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(child.stdout)


if __name__ == "__main__":
    print(json.dumps(_compile_specs(int(sys.argv[1]) if len(sys.argv) > 1 else 90)))
