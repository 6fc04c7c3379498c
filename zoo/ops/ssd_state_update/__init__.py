"""zoo::ssd_state_update: one Mamba-2 decode step of the SSM state, from the raw dt."""

from zoo.ops.ssd_state_update.op import ssd_state_update
from zoo.ops.ssd_state_update.reference import ssd_state_update_ref

__all__ = ["ssd_state_update", "ssd_state_update_ref"]
