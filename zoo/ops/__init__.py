"""The op library: one folder per fused op, every face of the op beside the others.

Each op folder holds
- `reference.py`: the `*_ref` function, plain PyTorch on explicit tensors, no host sync and no Python
  branch on tensor values: the oracle of every test and the body that decomposition puts back;
- `op.py`: the `torch.library.custom_op` in namespace `zoo` with its `register_fake` (shape and dtype
  logic) and the dispatch to an implementation chosen by `zoo.ops.kernels` (reference | cpu | triton);
- `cpu.py`: the fast CPU implementation;
- `triton_kernel.py`: the Triton kernel(s) for CUDA, with the `TRITON_KERNELS` specs that
  `zoo.ops.triton_aot` compiles for sm_90 (H100).

Convention for state (see docs/ops.md): ops are functional (`mutates_args=()`). A small state an op
updates (an SSM state, a conv window, DMC's running sums and window ring) is an explicit output. A large
cache (KV slots) is never returned whole: the op returns the entries to write and the model writes them
into its cache with an indexed store, which capture turns into an in-place update of the state input.

Importing this package registers the ops with torch (cheap); triton is imported only by the triton
implementations, when they run.
"""

from zoo.ops.kernels import KERNEL_CHOICES, get_kernel_choice, kernel_choice, set_kernel_choice

__all__ = ["KERNEL_CHOICES", "get_kernel_choice", "kernel_choice", "set_kernel_choice"]
