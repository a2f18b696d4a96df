"""Automatic NUMA balancing (kernel/sched/fair.c task_numa_work, mm/memory.c do_numa_page), with the
kernel's defaults (the numa_balancing_* sysctls of Linux 6.x, unchanged since 3.13: scan delay 1000 ms,
scan period 1000 ms to 60000 ms, 256 MB per scan).

Scanning. Each scan period a process has the next window of its address space (``scan_size_mb``) marked
PROT_NONE (change_prot_numa). The change raises PROTECTION_VMA over the whole window, so secondary MMUs drop
their translations there, as KVM does: the guest's next access to each page faults, and KVM's fault path,
which honours NUMA hinting faults, takes the hinting fault as a CPU access would. The access kernel logs
every hinting fault (page, accessing node).

The two-stage filter (should_numa_migrate_memory in kernel/sched/fair.c). Each hinting fault records its
node as the page's last (folio_xchg_last_cpupid) and migrates the page to the faulting node only if the
fault before it came from the same node: a page bounced between nodes stays put. In a process's first four
passes over its address space (numa_scan_seq <= 4) a page's first fault migrates it at once. Migration is
not rate-limited: the limit was removed upstream in 2018 (commit efaffc5e40ae, "mm, sched/numa: Remove
rate-limiting of automatic NUMA balancing migration"); a migration still fails when the target node would
fall below its high watermark. A page migrates with CLEAR invalidations (try_to_migrate_one); a pinned page
cannot migrate and is counted as refused (a failed migration, TNF_MIGRATE_FAIL).

Per-task scan-period adaptation (update_task_scan_period, called by task_numa_placement once per full pass
over the address space, when numa_scan_seq moves). From the hinting faults since the last pass: if there
were none that were local, or a migration failed, the period doubles; otherwise, with
lr_ratio = 10 x local / (local + remote), a ratio at or above 7 lengthens the period by (lr_ratio - 7)
slots of a tenth of it (at least one slot), and below 7 shortens it by (7 - lr_ratio) slots. The period
stays within [task_scan_min, task_scan_max]: the sysctl bounds divided by the number of 256 MB windows in
the process's resident memory, and not below 1000 ms / (2560 MB / scan size) (MAX_SCAN_WINDOW). The first
scan waits ``scan_delay_ms``.

``skip_pinned`` applies the kernel's newer behaviour: maybe-pinned pages are left out of PROT_NONE (no
pointless hinting faults on them) but the notifier still covers the whole window.

Simplified: a guest's vCPUs are one task (no per-thread cpupid: the filter compares nodes only, and every
fault counts as private, so the shared-fault branch of the scan-period rule never applies), no task
placement (the scheduler does not move vCPUs towards their memory), no numa groups.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, Metric, hookimpl, require

MIB_PAGES = 256
MAX_SCAN_WINDOW_MB = 2560  # kernel/sched/fair.c: the most a task scans per second
NUMA_PERIOD_SLOTS, NUMA_PERIOD_THRESHOLD = 10, 7  # kernel/sched/fair.c
EARLY_PASSES = 4  # should_numa_migrate_memory: first faults migrate at once while numa_scan_seq <= 4


@dataclass
class NumaConfig:
    scan_delay_ms: float  # numa_balancing_scan_delay_ms: before a process's first scan
    scan_period_min_ms: float  # numa_balancing_scan_period_min_ms
    scan_period_max_ms: float  # numa_balancing_scan_period_max_ms
    scan_size_mb: int  # numa_balancing_scan_size_mb: pages marked per scan
    migrate_page_ns: float  # copying one page between nodes, with its unmap and remap
    skip_pinned: bool  # leave maybe-pinned pages out of PROT_NONE (Linux 6.x); the notifier still fires

    def __post_init__(self) -> None:
        require(self.scan_period_min_ms > 0, f"scan_period_min_ms must be > 0, got {self.scan_period_min_ms}")
        require(
            self.scan_period_max_ms >= self.scan_period_min_ms,
            f"scan_period_max_ms ({self.scan_period_max_ms}) must be >= scan_period_min_ms ({self.scan_period_min_ms})",
        )
        require(self.scan_size_mb > 0, f"scan_size_mb must be > 0, got {self.scan_size_mb}")
        require(self.scan_delay_ms >= 0, f"scan_delay_ms must be >= 0, got {self.scan_delay_ms}")
        require(self.migrate_page_ns >= 0, f"migrate_page_ns must be >= 0, got {self.migrate_page_ns}")


class _Scan:
    """task_numa_work's state for one process."""

    def __init__(self, npages: int, period_ms: float, first_ns: float):
        self.period_ms = period_ms
        self.next_ns = first_ns
        self.cursor = 0
        self.passes = 0  # mm->numa_scan_seq: full passes over the address space
        self.local = self.remote = self.failed = 0  # p->numa_faults_locality since the last scan
        self.last_nid = np.full(npages, -1, dtype=np.int8)  # the node of each page's last hinting fault


class Numa(HostPolicy):
    name = "numa"
    Config = NumaConfig
    kernel_features = ("numa_balancing",)  # automatic NUMA balancing came in 3.8
    declared_metrics = (
        Metric("numa_pages_migrated", "pages", int, "pages NUMA balancing migrated", kernel="numa_pages_migrated"),
        Metric("numa_migrate_ns", "ns", float, "host CPU time NUMA balancing spent migrating"),
        Metric("numa_pte_updates", "pages", int, "PTEs made PROT_NONE by the scanner", kernel="numa_pte_updates"),
        Metric("numa_migrations_filtered", "faults", int, "misplaced hinting faults the two-stage cpupid filter "
               "held back (should_numa_migrate_memory)"),
        Metric("numa_scans", "scans", int, "scan windows change_prot_numa covered (task_numa_work runs)"),
        Metric("numa_scan_period_ms", "ms", float, "the scan period at the end, mean over mms",
               kernel="numa_scan_period (per task)"),
    )  # fmt: skip

    def __init__(self, sim, cfg: NumaConfig):
        super().__init__(sim, cfg)
        self.scans = {mm.index: _Scan(mm.npages, cfg.scan_period_min_ms, cfg.scan_delay_ms * 1e6) for mm in sim.mms}
        self.metrics = {"numa_pte_updates": 0, "numa_scans": 0, "numa_pages_migrated": 0, "numa_migrate_ns": 0.0,
                        "numa_migrations_filtered": 0}  # fmt: skip

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
        """Run the logged hinting faults through should_numa_migrate_memory and migrate what passes."""
        hints = sim.take_hint_faults()
        if hints.shape[0] == 0:
            return
        for mm in sim.mms:
            mine = hints[(hints[:, 0] >= mm.base) & (hints[:, 0] < mm.base + mm.npages)]
            if mine.size == 0 or mm.exited:
                continue
            scan = self.scans[mm.index]
            pages, nids = mine[:, 0] - mm.base, mine[:, 1]
            local = sim.host.nodes_of(mm.pte[pages]) == nids
            scan.local += int(np.count_nonzero(local))
            scan.remote += int(np.count_nonzero(~local))
            # The last node each fault saw: the previous fault on the same page in this log, else the array's.
            order = np.argsort(pages, kind="stable")
            p, n = pages[order], nids[order]
            first = np.ones(p.size, dtype=bool)
            first[1:] = p[1:] != p[:-1]
            last = np.empty_like(n)
            last[first] = scan.last_nid[p[first]]
            last[~first] = n[np.flatnonzero(~first) - 1]
            early = scan.passes <= EARLY_PASSES and (last < 0)
            passes = (early | (last == n)) & ~local[order]
            self.metrics["numa_migrations_filtered"] += int(np.count_nonzero(~local[order] & ~passes))
            ends = np.flatnonzero(np.r_[p[1:] != p[:-1], True])
            scan.last_nid[p[ends]] = n[ends]
            if not passes.any():
                continue
            chosen_pages, idx = np.unique(p[passes], return_index=True)  # a page's first passing fault decides
            chosen_nodes = n[passes][idx]
            for node in np.unique(chosen_nodes):
                moving = chosen_pages[chosen_nodes == node]
                high = int(sim.host.watermarks[node, 2])
                before = sim.counter("migrations_refused")
                moved = sim.migrate(mm, moving, int(node), keep_free=high)
                scan.failed += sim.counter("migrations_refused") - before
                self.metrics["numa_pages_migrated"] += moved
                self.metrics["numa_migrate_ns"] += moved * self.cfg.migrate_page_ns
                sim.charge(moved * self.cfg.migrate_page_ns)

    def _scan(self, sim, mm, scan: _Scan) -> None:
        """task_numa_work: change_prot_numa over the next window of ``mm``, then adapt the period."""
        window = self.cfg.scan_size_mb * MIB_PAGES
        start, end = scan.cursor, min(scan.cursor + window, mm.npages)
        if end >= mm.npages:
            scan.cursor = 0
            scan.passes += 1  # reset_ptenuma_scan: numa_scan_seq++
            self._update_period(mm, scan)  # task_numa_placement runs once per numa_scan_seq
        else:
            scan.cursor = end
        scan.next_ns = sim.time_ns + scan.period_ms * 1e6
        marked = mm.change_prot_numa(start, end, self.cfg.skip_pinned)  # PROTECTION_VMA, then PROT_NONE
        self.metrics["numa_pte_updates"] += marked
        self.metrics["numa_scans"] += 1
        sim.charge(marked * sim.costs.tlb_invalidate_page_ns)

    def _update_period(self, mm, scan: _Scan) -> None:
        """update_task_scan_period, with every fault private (shared = 0)."""
        lo, hi = self._period_bounds(mm)
        if scan.local == 0 or scan.failed:  # local + shared == 0, or numa_faults_locality[2]: scan slower
            scan.period_ms = min(hi, scan.period_ms * 2)
        else:
            slot = -(-scan.period_ms // NUMA_PERIOD_SLOTS)  # DIV_ROUND_UP
            lr_ratio = scan.local * NUMA_PERIOD_SLOTS // (scan.local + scan.remote)
            if lr_ratio >= NUMA_PERIOD_THRESHOLD:  # mostly local: no need to scan fast
                diff = max(lr_ratio - NUMA_PERIOD_THRESHOLD, 1) * slot
            else:  # private faults, many remote: scan faster
                diff = -(NUMA_PERIOD_THRESHOLD - lr_ratio) * slot
            scan.period_ms = min(max(scan.period_ms + diff, lo), hi)
        scan.local = scan.remote = scan.failed = 0

    def _period_bounds(self, mm) -> tuple[float, float]:
        """task_scan_min and task_scan_max: the sysctl bounds over the number of scan windows in the rss."""
        window = self.cfg.scan_size_mb * MIB_PAGES
        rss = int(np.count_nonzero(mm.pte >= 0)) or window
        windows = -(-rss // window)
        floor = 1000 / max(MAX_SCAN_WINDOW_MB // self.cfg.scan_size_mb, 1)
        lo = max(floor, self.cfg.scan_period_min_ms / windows)
        return lo, max(lo, self.cfg.scan_period_max_ms / windows)

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        periods = [s.period_ms for s in self.scans.values()]
        return {**self.metrics, "numa_scan_period_ms": float(np.mean(periods)) if periods else 0.0}


@hookimpl
def register_components():
    return [Numa]
