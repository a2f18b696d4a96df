"""The host-side cost model: nanoseconds per event, from ``conf/costs/*.yaml`` (each value sourced there).

An access costs ``access_ns`` scaled by the SLIT distance from the accessing CPU's node to the frame's
(``host.distance``: 10 local, 20 remote by default, so a remote access costs twice a local one), plus
its share of address translation: ``translation_ns``.

Costs of a secondary MMU's own events (its faults, flushes, device work) live in its own YAML file.
"""

from dataclasses import dataclass, field, fields
from typing import Any

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
    pwc_miss: float  # share of a walk's non-leaf references the page-walk caches do not absorb
    # The swap device serves one read at a time (a 2008 disk): a client's swap-ins queue for it rather than
    # being spread over its vCPUs (Simulation._account). false: zram, decompressing on each faulting CPU.
    swap_serial: bool
    # Where each figure comes from: {key: {range: [lo, hi], source: "..."}} (the agreed cost format).
    sources: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("sources", "swap_serial"):
                continue
            value = getattr(self, f.name)
            require(value >= 0, f"{f.name} must be >= 0 ns, got {value}")
        require(self.pwc_miss <= 1, f"pwc_miss must be a share in [0, 1], got {self.pwc_miss}")


def walk_refs(pwc_miss: float, host_levels: int, guest_levels: int | None = None) -> float:
    """Memory references of one page walk after a TLB miss, the page-walk caches counted.

    A walk of ``host_levels`` levels (4 for a 4 KiB page, 3 through a 2 MiB entry) makes one reference
    per level; the caches of upper-level entries (Intel's paging-structure caches, AMD's page walk
    cache) absorb all but ``pwc_miss`` of the non-leaf ones: ``1 + (levels - 1) x pwc_miss``.

    A two-dimensional walk (a guest under EPT/NPT, ``guest_levels`` given) makes, for each guest level
    still to walk, a walk of the host table to translate that guest-physical table address and the
    reference itself, then a last host walk for the data's guest-physical address: ``g x (1 + h) + h``
    with ``g`` and ``h`` the guest and host walks above. Without caches (``pwc_miss`` = 1) that is the
    architectural count: 24 references for 4K/4K, 19 for 4K/2M or 2M/4K, 15 for 2M/2M (Bhargava et al.,
    ASPLOS 2008, section 3). ``pwc_miss`` is calibrated in ``conf/costs/default.yaml``.
    """
    host = 1 + (host_levels - 1) * pwc_miss
    if guest_levels is None:
        return host
    guest = 1 + (guest_levels - 1) * pwc_miss
    return guest * (1 + host) + host


def translation_ns(costs: Costs, accesses: int, huge_accesses: int, footprint: int, walk_refs,
                   tlb_huge: bool = True) -> float:  # fmt: skip
    """Page walks for ``accesses`` accesses, ``huge_accesses`` of them through 2 MiB host mappings, spread
    over ``footprint`` pages. ``walk_refs(huge)`` is the memory references of one walk through a 2 MiB
    host mapping or not (``walk_refs`` above: about 4.7 for a nested 4K/4K walk, 1.4 native).

    ``tlb_huge``: whether a TLB entry for an access through a 2 MiB host mapping covers 2 MiB. A TLB entry
    caches the combined guest-virtual to host-physical translation, so it covers the smaller of the two
    page sizes: a 2 MiB host mapping under a guest's 4 KiB pages gives 4 KiB entries (splintering: Pham
    et al., "Using TLB speculation to overcome page splintering in virtual machines", Rutgers
    DCS-TR-713, 2015; Intel SDM vol. 3, EPT chapter, "caching translation information"), and only its
    walk is shorter.

    A coarse model: the TLB reaches ``tlb_entries`` pages of the mix's size (512 pages for a 2 MiB entry),
    accesses land uniformly on the footprint, and a miss costs a walk.
    """
    if accesses == 0 or footprint == 0:
        return 0.0
    huge = huge_accesses / accesses
    reach = costs.tlb_entries * (huge * 512 + (1 - huge) if tlb_huge else 1)
    miss = max(0.0, 1.0 - reach / footprint)
    refs = huge * walk_refs(True) + (1 - huge) * walk_refs(False)
    return accesses * miss * refs * costs.walk_ref_ns
