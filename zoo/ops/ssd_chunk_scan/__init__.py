"""zoo::ssd_chunk_scan: Mamba-2's chunked SSD scan for prefill, from an initial state."""

from zoo.ops.ssd_chunk_scan.op import ssd_chunk_scan
from zoo.ops.ssd_chunk_scan.reference import heads_from_groups, segsum, ssd_chunk_scan_ref

__all__ = ["heads_from_groups", "segsum", "ssd_chunk_scan", "ssd_chunk_scan_ref"]
