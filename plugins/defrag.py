"""Defragmentation: background compaction (kcompactd, proactive compaction) and khugepaged.

Compaction: each tick, on every node with fewer than ``free_blocks_target`` whole free pageblocks, up to
``compact_blocks_per_tick`` pageblocks are emptied (``mmnsim.compaction``): their pages migrate, through
MIGRATE invalidations, into the holes of partly used pageblocks. A pageblock holding a pinned page cannot
be emptied: a compaction failure. (Direct compaction at fault time is not modelled: a THP fault takes a free
pageblock if there is one, else falls back to 4 KiB pages.)

khugepaged: each tick it scans ``pages_to_scan`` pages of each process (``scan_sleep_ms`` apart in the
kernel; here the rate is per simulated second) and collapses an aligned 2 MiB region into a transparent
huge page when at most ``max_ptes_none`` of its pages are absent, none is swapped out or pinned, and at
least one was referenced (its PTE's young bit, or a secondary MMU's ``test_young``). The collapse raises
CLEAR over the 2 MiB, copies the pages into a free pageblock (paying ``copy_page_ns`` a page) and maps it
by PMD; KVM then maps the region with one 2 MiB spte on its next fault.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, Metric, hookimpl, require
from mmnsim.compaction import compact
from mmnsim.pagebits import HUGE_PAGES, P_DEVICE, P_HUGE, P_VMA_RW, P_YOUNG, PTE_NONE
from mmnsim.thp import collapse


@dataclass
class DefragConfig:
    compaction: bool
    free_blocks_target: int  # free pageblocks kcompactd keeps on each node
    compact_blocks_per_tick: int
    khugepaged: bool
    pages_to_scan: int  # khugepaged: pages scanned per scan_sleep_ms
    scan_sleep_ms: float
    max_ptes_none: int  # khugepaged_max_ptes_none: absent pages a collapse may fill with zeros
    copy_page_ns: float  # copying one 4 KiB page into the new THP, or to a compaction target

    def __post_init__(self) -> None:
        require(self.free_blocks_target >= 0, f"free_blocks_target must be >= 0, got {self.free_blocks_target}")
        require(self.compact_blocks_per_tick >= 1, f"compact_blocks_per_tick must be >= 1, got "
                                                   f"{self.compact_blocks_per_tick}")  # fmt: skip
        require(self.pages_to_scan >= HUGE_PAGES, f"pages_to_scan must be >= {HUGE_PAGES}, got {self.pages_to_scan}")
        require(self.scan_sleep_ms > 0, f"scan_sleep_ms must be > 0, got {self.scan_sleep_ms}")
        require(0 <= self.max_ptes_none < HUGE_PAGES, f"max_ptes_none must be in [0, {HUGE_PAGES - 1}]")
        require(self.copy_page_ns >= 0, f"copy_page_ns must be >= 0, got {self.copy_page_ns}")


class Defrag(HostPolicy):
    name = "defrag"
    Config = DefragConfig
    declared_metrics = (
        Metric("khugepaged_scanned", "pages", int, "pages khugepaged scanned"),
        Metric("thp_collapse_failed_pinned", "regions", int, "2 MiB regions khugepaged could not collapse: a page "
               "is pinned"),
        Metric("thp_collapse_failed_alloc", "regions", int, "collapses that found no free pageblock",
               kernel="thp_collapse_alloc_failed"),
    )  # fmt: skip

    def __init__(self, sim, cfg: DefragConfig):
        super().__init__(sim, cfg)
        self.cursor = {mm.index: 0 for mm in sim.mms}
        self.credit = 0.0  # pages khugepaged may scan now
        self.last_ns = 0.0
        self.metrics = {"thp_collapse_failed_pinned": 0, "thp_collapse_failed_alloc": 0, "khugepaged_scanned": 0}

    @hookimpl
    def host_tick(self, sim) -> None:
        if self.cfg.compaction:
            for node in range(sim.host.nodes):
                deficit = self.cfg.free_blocks_target - sim.host.free_blocks(node)
                if deficit > 0:
                    freed = compact(sim, node, min(deficit, self.cfg.compact_blocks_per_tick))
                    sim.charge(freed * HUGE_PAGES * self.cfg.copy_page_ns)
        if self.cfg.khugepaged:
            self.credit += (sim.time_ns - self.last_ns) / (self.cfg.scan_sleep_ms * 1e6) * self.cfg.pages_to_scan
            self.last_ns = sim.time_ns
            for mm in sim.mms:
                if not mm.exited:
                    self._khugepaged(sim, mm, int(self.credit) // len(sim.mms))
            self.credit -= int(self.credit)

    def _khugepaged(self, sim, mm, budget: int) -> None:
        regions = min(budget // HUGE_PAGES, mm.npages // HUGE_PAGES)
        for _ in range(regions):
            first = self.cursor[mm.index]
            self.cursor[mm.index] = first + HUGE_PAGES if first + 2 * HUGE_PAGES <= mm.npages else 0
            self.metrics["khugepaged_scanned"] += HUGE_PAGES
            pte, flags = mm.pte[first : first + HUGE_PAGES], mm.flags[first : first + HUGE_PAGES]
            if flags[0] & P_HUGE or ((flags & P_VMA_RW) != P_VMA_RW).any() or (flags & P_DEVICE).any():
                continue
            present = pte >= 0
            if (pte < PTE_NONE).any() or HUGE_PAGES - present.sum() > self.cfg.max_ptes_none or not present.any():
                continue
            if sim.host.ft.pin[pte[present]].any():
                self.metrics["thp_collapse_failed_pinned"] += 1
                continue
            referenced = bool((flags[present] & P_YOUNG).any())
            if not referenced and mm.chain:
                pages = first + np.flatnonzero(present)
                referenced = bool(mm.chain.young("test_young", pages, pages + 1).any())
            if not referenced:
                continue
            node = sim.host.node_of(int(pte[present][0]))
            if sim.host.free_blocks(node) == 0 or not collapse(sim, mm, first, node):
                self.metrics["thp_collapse_failed_alloc"] += 1
                continue
            sim.charge(int(present.sum()) * self.cfg.copy_page_ns)

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        return dict(self.metrics)


@hookimpl
def register_components():
    return [Defrag]
