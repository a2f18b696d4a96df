"""The host-side cost model: nanoseconds per event, from ``conf/costs/*.yaml`` (each value sourced there).

An access costs ``access_ns`` scaled by the SLIT distance from the accessing CPU's node to the frame's
(``host.distance``: 10 local, 20 remote by default, so a remote access costs twice a local one).

Costs of a secondary MMU's own events (its faults, flushes, device work) live in its own YAML file.
"""

from dataclasses import dataclass, fields

from .config import require


@dataclass
class Costs:
    access_ns: float  # one access served by local memory
    minor_fault_ns: float  # anonymous first-touch fault: allocate, zero, map
    swap_in_ns: float  # major fault: read the page back from swap
    swap_out_ns: float  # write one page to swap
    reclaim_scan_ns: float  # examine one page on the LRU (rmap walk, young test)
    tlb_invalidate_page_ns: float  # invalidate one page in the local CPU TLB

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            require(value >= 0, f"{f.name} must be >= 0 ns, got {value}")
