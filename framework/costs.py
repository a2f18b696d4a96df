"""The host-side cost model: nanoseconds per event, from ``conf/costs/*.yaml`` (each value sourced there).

An access costs ``access_ns`` scaled by the SLIT distance from the accessing CPU's node to the frame's
(``host.distance``: 10 local, 20 remote by default, so a remote access costs twice a local one), plus
its share of address translation: ``translation_ns``.

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
    tlb_entries: int  # second-level TLB entries of the CPU (or device) translating the accesses
    walk_ref_ns: float  # one memory reference of a page walk after a TLB miss
    compact_page_ns: float  # migrating one page in direct compaction (unmap, copy 4 KiB, remap)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            require(value >= 0, f"{f.name} must be >= 0 ns, got {value}")


def translation_ns(costs: Costs, accesses: int, huge_accesses: int, footprint: int, walk_refs) -> float:
    """Page walks for ``accesses`` accesses, ``huge_accesses`` of them through 2 MiB mappings, spread over
    ``footprint`` pages. ``walk_refs(huge)`` is the memory references of one walk (24 for a nested 4K/4K
    walk, 4 native).

    A coarse model: the TLB reaches ``tlb_entries`` pages of the mix's size (512 pages for a 2 MiB entry),
    accesses land uniformly on the footprint, and a miss costs a full walk.
    """
    if accesses == 0 or footprint == 0:
        return 0.0
    huge = huge_accesses / accesses
    reach = costs.tlb_entries * (huge * 512 + (1 - huge))
    miss = max(0.0, 1.0 - reach / footprint)
    refs = huge * walk_refs(True) + (1 - huge) * walk_refs(False)
    return accesses * miss * refs * costs.walk_ref_ns
