"""`python -m zoo`: the `zoo` command line (what `torchrun -m zoo` starts on every rank)."""

import sys

from zoo.cli import main

sys.exit(main())
