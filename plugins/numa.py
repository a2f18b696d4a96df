"""Automatic NUMA balancing (kernel/sched/fair.c task_numa_work, mm/memory.c do_numa_page), with the
kernel's defaults (the numa_balancing_* sysctls of Linux 6.x, unchanged since 3.13: scan delay 1000 ms,
scan period 1000 ms to 60000 ms, 256 MB per scan).

Scanning. Each scan period a process has the next window of its address space (``scan_size_mb``) marked
PROT_NONE (change_prot_numa). The change raises PROTECTION_VMA over the whole window, so secondary MMUs drop
their translations there, as KVM does: the guest's next access to each page faults, and KVM's fault path,
which honours NUMA hinting faults, takes the hinting fault as a CPU access would. The access kernel logs
every hinting fault (page, accessing node).

The hinting fault itself is the kernel's (``Simulation.numa_faults``, ``mmnsim.numafaults``): the two-stage
filter of should_numa_migrate_memory decides in the fault whether the page moves to the faulting node (only if
the fault before it came from the same node: a page bounced between nodes stays put; in a process's first
four passes a page's first fault moves it at once), and migrate_misplaced_folio moves it there and then, with
CLEAR invalidations (try_to_migrate_one), unless it is pinned (counted as refused: a failed migration,
TNF_MIGRATE_FAIL) or the target node would fall below its high watermark. Migration is not rate-limited: the
limit was removed upstream in 2018 (commit efaffc5e40ae, "mm, sched/numa: Remove rate-limiting of automatic NUMA
balancing migration").

Per-task scan-period adaptation (update_task_scan_period, called by task_numa_placement once per full pass
over the address space, when numa_scan_seq moves). From the hinting faults since the last pass: if there
were none that were local or shared, or a migration failed, the period doubles. Otherwise, with
ps_ratio = 10 x private / (private + shared) and lr_ratio = 10 x local / (local + remote): a ps_ratio at or
above 7 (mostly private faults: the memory is the task's own) lengthens the period by (ps_ratio - 7) slots of a
tenth of it (at least one slot), else an lr_ratio at or above 7 lengthens it by (lr_ratio - 7) slots, else it
shortens by (7 - max(lr_ratio, ps_ratio)) slots. Here every fault is private (one task per process), so the
period lengthens by three slots a pass unless no fault was local. The period stays within [task_scan_min,
task_scan_max]: the sysctl bounds divided by the number of 256 MB windows in the process's resident memory,
and not below 1000 ms / (2560 MB / scan size) (MAX_SCAN_WINDOW). The first
scan waits ``scan_delay_ms``.

``skip_pinned`` applies the kernel's newer behaviour: maybe-pinned pages are left out of PROT_NONE (no
pointless hinting faults on them) but the notifier still covers the whole window.

Simplified: a guest's vCPUs are one task (no per-thread cpupid: the filter compares nodes only, and every
fault counts as private, so the shared-fault branches of the scan-period rule never apply), no task
placement (the scheduler does not move vCPUs towards their memory), no numa groups.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, Metric, hookimpl, require

MIB_PAGES = 256
MAX_SCAN_WINDOW_MB = 2560  # kernel/sched/fair.c: the most a task scans per second
NUMA_PERIOD_SLOTS, NUMA_PERIOD_THRESHOLD = 10, 7  # kernel/sched/fair.c


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

    def __init__(self, period_ms: float, first_ns: float):
        self.period_ms = period_ms
        self.next_ns = first_ns
        self.cursor = 0
        self.passes = 0  # mm->numa_scan_seq: full passes over the address space


class Numa(HostPolicy):
    name = "numa"
    Config = NumaConfig
    kernel_features = ("numa_balancing",)  # automatic NUMA balancing came in 3.8
    declared_metrics = (
        Metric("numa_pages_migrated", "pages", int, "pages NUMA balancing migrated", kernel="numa_pages_migrated"),
        Metric("numa_migrate_ns", "ns", float, "time the faulting tasks spent migrating pages in their hinting faults"),
        Metric("numa_pte_updates", "pages", int, "PTEs made PROT_NONE by the scanner", kernel="numa_pte_updates"),
        Metric("numa_migrations_filtered", "faults", int, "misplaced hinting faults the two-stage cpupid filter "
               "held back (should_numa_migrate_memory)"),
        Metric("numa_scans", "scans", int, "scan windows change_prot_numa covered (task_numa_work runs)"),
        Metric("numa_scan_period_ms", "ms", float, "the scan period at the end, mean over mms",
               kernel="numa_scan_period (per task)"),
    )  # fmt: skip

    def __init__(self, sim, cfg: NumaConfig):
        super().__init__(sim, cfg)
        self.scans = {mm.index: _Scan(cfg.scan_period_min_ms, cfg.scan_delay_ms * 1e6) for mm in sim.mms}
        self.metrics = {"numa_pte_updates": 0, "numa_scans": 0}
        # The hinting faults: the filter and the migration run in the fault (do_numa_page), by the framework.
        self.faults = sim.numa_faults(cfg.migrate_page_ns) if sim.host.nodes > 1 else None

    @hookimpl
    def host_tick(self, sim) -> None:
        if sim.host.nodes < 2:
            return
        for mm in sim.mms:
            scan = self.scans[mm.index]
            if not mm.exited and sim.time_ns >= scan.next_ns:
                self._scan(sim, mm, scan)

    def _scan(self, sim, mm, scan: _Scan) -> None:
        """task_numa_work: change_prot_numa over the next window of ``mm``, then adapt the period."""
        window = self.cfg.scan_size_mb * MIB_PAGES
        start, end = scan.cursor, min(scan.cursor + window, mm.npages)
        if end >= mm.npages:
            scan.cursor = 0
            scan.passes += 1  # reset_ptenuma_scan: numa_scan_seq++
            self.faults.set_passes(mm.index, scan.passes)
            self._update_period(mm, scan)  # task_numa_placement runs once per numa_scan_seq
        else:
            scan.cursor = end
        scan.next_ns = sim.time_ns + scan.period_ms * 1e6
        marked = mm.change_prot_numa(start, end, self.cfg.skip_pinned)  # PROTECTION_VMA, then PROT_NONE
        self.metrics["numa_pte_updates"] += marked
        self.metrics["numa_scans"] += 1
        sim.charge(marked * sim.costs.tlb_invalidate_page_ns)

    def _update_period(self, mm, scan: _Scan) -> None:
        """update_task_scan_period (kernel/sched/fair.c), with every fault private (private = local + remote,
        shared = 0: one task per process)."""
        local, remote, failed = self.faults.take_locality(mm.index)
        private, shared = local + remote, 0
        lo, hi = self._period_bounds(mm)
        if local + shared == 0 or failed:  # no faults of interest, or migration failed: scan slower
            scan.period_ms = min(hi, scan.period_ms * 2)
            return
        slot = -(-scan.period_ms // NUMA_PERIOD_SLOTS)  # DIV_ROUND_UP
        lr_ratio = local * NUMA_PERIOD_SLOTS // (local + remote)
        ps_ratio = private * NUMA_PERIOD_SLOTS // (private + shared)
        if ps_ratio >= NUMA_PERIOD_THRESHOLD:  # mostly private: "memory is already local", scan slower
            diff = max(ps_ratio - NUMA_PERIOD_THRESHOLD, 1) * slot
        elif lr_ratio >= NUMA_PERIOD_THRESHOLD:  # mostly shared: others may move it again, scan slower
            diff = max(lr_ratio - NUMA_PERIOD_THRESHOLD, 1) * slot
        else:  # private faults, many remote: scan faster to move the memory over
            diff = -(NUMA_PERIOD_THRESHOLD - max(lr_ratio, ps_ratio)) * slot
        scan.period_ms = min(max(scan.period_ms + diff, lo), hi)

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
        migrated = self.faults.migrated() if self.faults else 0
        return {**self.metrics, "numa_scan_period_ms": float(np.mean(periods)) if periods else 0.0,
                "numa_pages_migrated": migrated, "numa_migrate_ns": migrated * self.cfg.migrate_page_ns,
                "numa_migrations_filtered": self.faults.filtered() if self.faults else 0}  # fmt: skip


@hookimpl
def register_components():
    return [Numa]
