"""Defragmentation: background compaction (kcompactd, proactive compaction) and khugepaged.

Compaction: each tick, on every node with fewer than ``free_blocks_target`` whole free pageblocks, up to
``compact_blocks_per_tick`` pageblocks are emptied (``mmnsim.compact``): their pages migrate, through
CLEAR invalidations, into the holes of partly used pageblocks. A pageblock holding a pinned page cannot
be emptied: a compaction failure. (Direct compaction at fault time is the framework's: a THP fault in an
MADV_HUGEPAGE region compacts one pageblock before falling back, see ``host.thp``.)

khugepaged (mm/khugepaged.c), at the kernel's defaults: it wakes every ``scan_sleep_ms`` (scan_sleep_millisecs,
10000) and scans ``pages_to_scan`` pages (4096), shared among the processes it tracks (here: in turn, as
khugepaged_scan_mm_slot walks its mm list). It only runs when THP is enabled, and with host.thp=madvise only
in MADV_HUGEPAGE memory (hugepage_vma_check). An aligned 2 MiB region is collapsed into a transparent huge
page when (hpage_collapse_scan_pmd) at most ``max_ptes_none`` of its pages are absent (511), at most
``max_ptes_swap`` are swapped out (64), none is pinned, and enough were referenced: one young page, or half
of the region when some are swapped (``referenced < HPAGE_PMD_NR / 2`` fails the scan). Referenced is the
PTE's young bit or a secondary MMU's ``test_young``. collapse_huge_page first swaps the swapped pages in
(__collapse_huge_page_swapin: major faults), then raises CLEAR over the 2 MiB, copies the pages into a free
pageblock (paying ``copy_page_ns`` a page) and maps it by PMD; KVM then maps the region with one 2 MiB spte
on its next fault.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, Metric, collapse_huge_page, compact, hookimpl, require
from mmnsim.pagebits import HUGE_PAGES, P_DEVICE, P_HUGE, P_VMA_RW, P_YOUNG, PTE_NONE


@dataclass
class DefragConfig:
    compaction: bool
    free_blocks_target: int  # free pageblocks kcompactd keeps on each node
    compact_blocks_per_tick: int
    khugepaged: bool
    pages_to_scan: int  # khugepaged/pages_to_scan: pages scanned per wake-up
    scan_sleep_ms: float  # khugepaged/scan_sleep_millisecs: between wake-ups
    max_ptes_none: int  # khugepaged/max_ptes_none: absent pages a collapse may fill with zeros
    max_ptes_swap: int  # khugepaged/max_ptes_swap: swapped-out pages a collapse may swap back in
    copy_page_ns: float  # copying one 4 KiB page into the new THP, or to a compaction target

    def __post_init__(self) -> None:
        require(self.free_blocks_target >= 0, f"free_blocks_target must be >= 0, got {self.free_blocks_target}")
        require(self.compact_blocks_per_tick >= 1, f"compact_blocks_per_tick must be >= 1, got "
                                                   f"{self.compact_blocks_per_tick}")  # fmt: skip
        require(self.pages_to_scan >= HUGE_PAGES, f"pages_to_scan must be >= {HUGE_PAGES}, got {self.pages_to_scan}")
        require(self.scan_sleep_ms > 0, f"scan_sleep_ms must be > 0, got {self.scan_sleep_ms}")
        require(0 <= self.max_ptes_none < HUGE_PAGES, f"max_ptes_none must be in [0, {HUGE_PAGES - 1}]")
        require(0 <= self.max_ptes_swap < HUGE_PAGES, f"max_ptes_swap must be in [0, {HUGE_PAGES - 1}]")
        require(self.copy_page_ns >= 0, f"copy_page_ns must be >= 0, got {self.copy_page_ns}")


class Defrag(HostPolicy):
    name = "defrag"
    Config = DefragConfig
    kernel_features = ("compaction", "thp")  # compaction (2.6.35) and khugepaged (2.6.38)
    declared_metrics = (
        Metric("khugepaged_swapins", "pages", int, "swapped pages khugepaged read back in before a collapse "
               "(__collapse_huge_page_swapin, up to max_ptes_swap a region)"),
        Metric("khugepaged_scanned", "pages", int, "pages khugepaged scanned"),
        Metric("thp_collapse_failed_pinned", "regions", int, "2 MiB regions khugepaged could not collapse: a page "
               "is pinned"),
        Metric("thp_collapse_failed_alloc", "regions", int, "collapses that found no free pageblock",
               kernel="thp_collapse_alloc_failed"),
    )  # fmt: skip

    def __init__(self, sim, cfg: DefragConfig):
        super().__init__(sim, cfg)
        self.cursor = {mm.index: 0 for mm in sim.mms}
        self.next_mm = 0  # khugepaged_scan.mm_slot: the mm it scans next
        self.next_wake_ns = cfg.scan_sleep_ms * 1e6
        self.metrics = {"thp_collapse_failed_pinned": 0, "thp_collapse_failed_alloc": 0, "khugepaged_scanned": 0,
                        "khugepaged_swapins": 0}  # fmt: skip

    @hookimpl
    def host_tick(self, sim) -> None:
        if self.cfg.compaction:
            for node in range(sim.host.nodes):
                deficit = self.cfg.free_blocks_target - sim.host.free_blocks(node)
                if deficit > 0:
                    freed = compact(sim, node, min(deficit, self.cfg.compact_blocks_per_tick))
                    sim.charge(freed * HUGE_PAGES * self.cfg.copy_page_ns)
        if self.cfg.khugepaged and sim.host_cfg.thp != "never" and sim.time_ns >= self.next_wake_ns:
            # khugepaged_wait_work: one scan per scan_sleep_millisecs that passed (a long tick holds several;
            # more than one pass over every mm would find nothing new)
            sleep_ns = self.cfg.scan_sleep_ms * 1e6
            wakeups = int((sim.time_ns - self.next_wake_ns) // sleep_ns) + 1
            self.next_wake_ns += wakeups * sleep_ns
            passes = -(-sum(mm.npages for mm in sim.mms) // self.cfg.pages_to_scan) + 1
            for _ in range(min(wakeups, passes)):
                self._khugepaged_do_scan(sim)

    def _khugepaged_do_scan(self, sim) -> None:
        """One wake-up: ``pages_to_scan`` pages, mm after mm from where the last scan stopped."""
        madvise_only = sim.host_cfg.thp == "madvise"
        eligible = [mm for mm in sim.mms if not mm.exited and (mm.hugepage or not madvise_only)]
        budget = self.cfg.pages_to_scan
        for _ in range(len(eligible)):
            if budget < HUGE_PAGES or not eligible:
                break
            mm = eligible[self.next_mm % len(eligible)]
            budget = self._scan_mm(sim, mm, budget)
            if budget >= HUGE_PAGES:  # this mm's pass ended: the next mm
                self.next_mm += 1

    def _scan_mm(self, sim, mm, budget: int) -> int:
        """Scan ``mm`` from its cursor until the budget or the end of the mm; return the budget left."""
        while budget >= HUGE_PAGES:
            first = self.cursor[mm.index]
            if first + HUGE_PAGES > mm.npages:
                self.cursor[mm.index] = 0
                return budget
            self.cursor[mm.index] = first + HUGE_PAGES
            budget -= HUGE_PAGES
            self.metrics["khugepaged_scanned"] += HUGE_PAGES
            self._try_collapse(sim, mm, first)
        return budget

    def _try_collapse(self, sim, mm, first: int) -> None:
        """hpage_collapse_scan_pmd, then collapse_huge_page, for the region at ``first``."""
        pte, flags = mm.pte[first : first + HUGE_PAGES], mm.flags[first : first + HUGE_PAGES]
        if flags[0] & P_HUGE or ((flags & P_VMA_RW) != P_VMA_RW).any() or (flags & P_DEVICE).any():
            return
        present = pte >= 0
        swapped = pte < PTE_NONE
        nswap = int(swapped.sum())
        if HUGE_PAGES - present.sum() - nswap > self.cfg.max_ptes_none or nswap > self.cfg.max_ptes_swap:
            return
        if not present.any():
            return
        if sim.host.ft.pin[pte[present]].any():
            self.metrics["thp_collapse_failed_pinned"] += 1
            return
        young = (flags[present] & P_YOUNG) != 0
        if mm.chain and not young.all():
            pages = first + np.flatnonzero(present)
            young |= mm.chain.young("test_young", pages, pages + 1)
        referenced = int(np.count_nonzero(young))
        if not referenced or (nswap and referenced < HUGE_PAGES // 2):
            return
        if nswap:  # __collapse_huge_page_swapin
            back = sim.swap_in(mm, first + np.flatnonzero(swapped))
            self.metrics["khugepaged_swapins"] += back
            if back < nswap:
                return
        present = mm.pte[first : first + HUGE_PAGES] >= 0
        node = sim.host.node_of(int(mm.pte[first + int(np.argmax(present))]))
        if sim.host.free_blocks(node) == 0 or not collapse_huge_page(sim, mm, first, node):
            self.metrics["thp_collapse_failed_alloc"] += 1
            return
        sim.charge(int(present.sum()) * self.cfg.copy_page_ns)

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        return dict(self.metrics)


@hookimpl
def register_components():
    return [Defrag]
