"""Automatic NUMA balancing (kernel/sched/fair.c task_numa_work, mm/memory.c do_numa_page).

Every scan period each process has a window of its address space (``scan_size_mb``) marked PROT_NONE
(change_prot_numa). The change raises PROTECTION_VMA over the whole window, so secondary MMUs drop their
translations there, as KVM does: the guest's next access to each page faults, and KVM's fault path, which
honours NUMA hinting faults, takes the hinting fault like a CPU access would. A hinting fault records
which node touched the page (the access kernel logs misplaced pages); each tick the policy migrates the
logged pages to the node that touched them (event MIGRATE), up to ``migrate_rate_mb_per_s`` and only while
the target node stays above its high watermark. Pinned pages cannot migrate and are counted as refused.

The scan period adapts as the kernel's update_task_scan_period does in spirit: if most hinting faults
since the last scan were local, the period doubles (up to the maximum); if most were remote, it halves
(down to the minimum); the fault counts are the host's, not the process's own. ``skip_pinned`` applies
the kernel's newer behaviour: maybe-pinned pages are left out of PROT_NONE (no pointless hinting faults
on them) but the notifier still covers the whole window.

Simplified: one scan per process, no task placement, no two-stage filter (a page migrates on its first
misplaced hinting fault), no shared/private fault classification.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import Event, HostPolicy, Metric, NotifierRange, hookimpl, require
from mmnsim.pagebits import P_DEVICE, P_PROTNONE
from mmnsim.thp import split_straddling

MIB_PAGES = 256


@dataclass
class NumaConfig:
    scan_delay_ms: float  # numa_balancing_scan_delay_ms: before a process's first scan
    scan_period_min_ms: float  # numa_balancing_scan_period_min_ms
    scan_period_max_ms: float  # numa_balancing_scan_period_max_ms
    scan_size_mb: int  # numa_balancing_scan_size_mb: pages marked per scan
    migrate_rate_mb_per_s: float  # migration rate limit
    migrate_page_ns: float  # copying one page between nodes, with its unmap and remap
    skip_pinned: bool  # leave maybe-pinned pages out of PROT_NONE (Linux 6.x); the notifier still fires

    def __post_init__(self) -> None:
        require(self.scan_period_min_ms > 0, f"scan_period_min_ms must be > 0, got {self.scan_period_min_ms}")
        require(
            self.scan_period_max_ms >= self.scan_period_min_ms,
            f"scan_period_max_ms ({self.scan_period_max_ms}) must be >= scan_period_min_ms ({self.scan_period_min_ms})",
        )
        require(self.scan_size_mb > 0, f"scan_size_mb must be > 0, got {self.scan_size_mb}")
        require(self.migrate_rate_mb_per_s > 0, f"migrate_rate_mb_per_s must be > 0, got {self.migrate_rate_mb_per_s}")
        require(self.scan_delay_ms >= 0, f"scan_delay_ms must be >= 0, got {self.scan_delay_ms}")
        require(self.migrate_page_ns >= 0, f"migrate_page_ns must be >= 0, got {self.migrate_page_ns}")


class _Scan:
    """task_numa_work's state for one process."""

    def __init__(self, period_ns: float, first_ns: float):
        self.period_ns = period_ns
        self.next_ns = first_ns
        self.cursor = 0
        self.faults_at = 0  # the host's hinting-fault counters at the last scan
        self.local_at = 0


class Numa(HostPolicy):
    name = "numa"
    Config = NumaConfig
    declared_metrics = (
        Metric("numa_pages_migrated", "pages", int, "pages NUMA balancing migrated", kernel="numa_pages_migrated"),
        Metric("numa_migrate_ns", "ns", float, "host CPU time NUMA balancing spent migrating"),
        Metric("numa_pte_updates", "pages", int, "PTEs made PROT_NONE by the scanner", kernel="numa_pte_updates"),
        Metric("numa_scans", "scans", int, "scan windows change_prot_numa covered (task_numa_work runs)"),
        Metric("numa_scan_period_ms", "ms", float, "the scan period at the end, mean over mms",
               kernel="numa_scan_period (per task)"),
    )  # fmt: skip

    def __init__(self, sim, cfg: NumaConfig):
        super().__init__(sim, cfg)
        ms = 1e6
        self.scans = {mm.index: _Scan(cfg.scan_period_min_ms * ms, cfg.scan_delay_ms * ms) for mm in sim.mms}
        self.last_time_ns = 0.0
        self.metrics = {"numa_pte_updates": 0, "numa_scans": 0, "numa_pages_migrated": 0, "numa_migrate_ns": 0.0}

    @hookimpl
    def host_tick(self, sim) -> None:
        if sim.host.nodes < 2:
            return
        self._migrate_misplaced(sim)
        for mm in sim.mms:
            scan = self.scans[mm.index]
            if not mm.exited and sim.time_ns >= scan.next_ns:
                self._scan(sim, mm, scan)

    def _migrate_misplaced(self, sim) -> None:
        """Migrate the pages the hinting faults found on the wrong node, within the rate limit."""
        hints = sim.take_hint_faults()
        elapsed = max(sim.time_ns - self.last_time_ns, 0.0)
        self.last_time_ns = sim.time_ns
        budget = int(self.cfg.migrate_rate_mb_per_s * MIB_PAGES * elapsed / 1e9)
        if hints.shape[0] == 0:
            return
        for mm in sim.mms:
            mine = hints[(hints[:, 0] >= mm.base) & (hints[:, 0] < mm.base + mm.npages)]
            if mine.size == 0:
                continue
            for node in np.unique(mine[:, 1]):
                pages = np.unique(mine[mine[:, 1] == node, 0]) - mm.base
                pages = pages[: max(budget, 0)]
                if pages.size == 0:
                    continue
                high = int(sim.host.watermarks[node, 2])
                moved = sim.migrate(mm, pages, int(node), keep_free=high)
                budget -= pages.size
                self.metrics["numa_pages_migrated"] += moved
                self.metrics["numa_migrate_ns"] += moved * self.cfg.migrate_page_ns
                sim.charge(moved * self.cfg.migrate_page_ns)

    def _scan(self, sim, mm, scan: _Scan) -> None:
        """change_prot_numa over the next window of ``mm``, then adapt the period."""
        window = self.cfg.scan_size_mb * MIB_PAGES
        start, end = scan.cursor, min(scan.cursor + window, mm.npages)
        scan.cursor = end if end < mm.npages else 0
        faults, local = sim.counter("numa_hint_faults"), sim.counter("numa_hint_faults_local")
        if faults > scan.faults_at:
            local_fraction = (local - scan.local_at) / (faults - scan.faults_at)
            if local_fraction >= 0.7:
                scan.period_ns = min(scan.period_ns * 2, self.cfg.scan_period_max_ms * 1e6)
            elif local_fraction < 0.3:
                scan.period_ns = max(scan.period_ns / 2, self.cfg.scan_period_min_ms * 1e6)
        scan.faults_at, scan.local_at = faults, local
        scan.next_ns = sim.time_ns + scan.period_ns

        split_straddling(sim, mm, start, end)  # change_pmd_range splits a THP the window covers in part
        pte, flags = mm.pte[start:end], mm.flags[start:end]
        target = (pte >= 0) & ((flags & (P_PROTNONE | P_DEVICE)) == 0)
        if self.cfg.skip_pinned:
            target &= sim.host.ft.pin[np.maximum(pte, 0)] == 0
        ranges = NotifierRange(mm, np.array([start]), np.array([end]), Event.PROTECTION_VMA)

        def protect() -> None:
            flags[target] |= P_PROTNONE

        mm.invalidate(ranges, protect)
        self.metrics["numa_pte_updates"] += int(np.count_nonzero(target))
        self.metrics["numa_scans"] += 1
        sim.charge(int(np.count_nonzero(target)) * sim.costs.tlb_invalidate_page_ns)

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        periods = [s.period_ns / 1e6 for s in self.scans.values()]
        return {**self.metrics, "numa_scan_period_ms": float(np.mean(periods)) if periods else 0.0}


@hookimpl
def register_components():
    return [Numa]
