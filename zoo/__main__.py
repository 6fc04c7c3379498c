"""`python -m zoo`: the `zoo` command line (what `torchrun -m zoo` starts on every rank)."""

import sys

from zoo.cli import main

try:
    main()
except SystemExit as stop:
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_initialized():  # a --tp rank: runtime.distributed.exit_rank says why it leaves so
            from runtime.distributed import exit_rank

            exit_rank(stop.code)
    raise
