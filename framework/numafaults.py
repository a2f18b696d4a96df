"""NUMA hinting faults handled where the kernel handles them: in the fault.

NUMA balancing makes PTEs PROT_NONE (change_prot_numa, a policy's scanner); the next access takes a hinting
fault. The kernel decides there and then whether the page should move (mm/memory.c do_numa_page ->
numa_migrate_check -> mpol_misplaced -> should_numa_migrate_memory in kernel/sched/fair.c) and moves it in
the fault (migrate_misplaced_folio in mm/migrate.c, which raises CLEAR through try_to_migrate_one); the
access is then retried against the new frame. A secondary MMU's fault on such a page goes the same way
(KVM's gup honours hinting faults) and, since the migration's invalidation moved its sequence, retries once.

A policy asks for this with ``Simulation.numa_faults``; the access kernel then runs, for every hinting fault
on a 4 KiB page, the two-stage filter of should_numa_migrate_memory (the page migrates to the faulting node
only if the previous fault on it came from that node too, or, while the process is young, if it had none)
and the migration itself, with the compiled notifier path when every subscriber of the mm has one (else it
returns to Python, which migrates through ``Simulation.migrate``; so does a hinting fault on a THP, which
is split first). The policy reads the faults' locality from ``stats`` and keeps the process's scan passes
there (``PASSES``: numa_scan_seq).

Simplified: one task per process (a guest's vCPUs share one cpupid: the filter compares nodes, and every
fault is private); a migration fails when the target node would fall below its high watermark
(migrate_balanced_pgdat).
"""

from typing import TYPE_CHECKING

import numpy as np

from . import counters as C
from .fastpath import invalidate_end, invalidate_start
from .frames import NFREE, WMARK_HIGH, alloc_frame, free_frame
from .kernel import kernel

if TYPE_CHECKING:
    from .simulation import Client, Simulation

# Columns of NumaFaults.stats, one row per mm.
PASSES, LOCAL, REMOTE, FAILED, MIGRATED, FILTERED, CHARGED = range(7)
STATS = 7
EARLY_PASSES = 4  # should_numa_migrate_memory: a page's first fault migrates it while numa_scan_seq <= 4
NUMA_ACTOR = "the NUMA hinting fault (do_numa_page -> migrate_misplaced_folio)"


class NumaFaults:
    """What the access kernel needs to handle hinting faults: each page's last faulting node
    (folio_last_cpupid, here the node), and per mm the scan passes and the faults' outcomes."""

    def __init__(self, sim: "Simulation", migrate_page_ns: float):
        self.sim = sim
        self.migrate_page_ns = migrate_page_ns  # what the faulting task pays per page it moves
        self.last_nid = np.full(sim.host._pt.pte.size, -1, dtype=np.int8)
        self.stats = np.zeros((len(sim.mms), STATS), dtype=np.int64)

    def take_locality(self, mm: int) -> tuple[int, int, int]:
        """The hinting faults of mm ``mm`` since the last call: (local, remote, failed migrations), as
        p->numa_faults_locality; then zeroed (update_task_scan_period clears them)."""
        row = self.stats[mm]
        got = int(row[LOCAL]), int(row[REMOTE]), int(row[FAILED])
        row[LOCAL] = row[REMOTE] = row[FAILED] = 0
        return got

    def set_passes(self, mm: int, passes: int) -> None:
        """The process's full scan passes so far (mm->numa_scan_seq): the filter lets a page's first fault
        migrate it while it is at most EARLY_PASSES."""
        self.stats[mm, PASSES] = passes

    def migrated(self) -> int:
        """Pages migrated in hinting faults so far (numa_pages_migrated)."""
        return int(self.stats[:, MIGRATED].sum())

    def filtered(self) -> int:
        """Misplaced hinting faults the two-stage filter held back so far."""
        return int(self.stats[:, FILTERED].sum())

    def settle(self, client: "Client | None") -> None:
        """Charge the pages migrated in faults since the last call to the client that took the faults."""
        migrated = self.stats[:, MIGRATED] - self.stats[:, CHARGED]
        total = int(migrated.sum())
        if total:
            self.stats[:, CHARGED] = self.stats[:, MIGRATED]
            if client is not None:
                client.stall(total * self.migrate_page_ns)
            else:
                self.sim.host_cpu_ns += total * self.migrate_page_ns


@kernel(inline=True)
def numa_target(last_nid, stats, mm, key, page_node, nid):
    """should_numa_migrate_memory: where the page of ``key``, on ``page_node``, should go after a hinting fault
    from ``nid``, or -1. Records the fault's locality and the page's last node; a misplaced fault the two-stage
    filter holds back counts as FILTERED."""
    last = last_nid[key]
    last_nid[key] = nid
    if page_node == nid:
        stats[mm, LOCAL] += 1
        return -1
    stats[mm, REMOTE] += 1
    if (stats[mm, PASSES] <= EARLY_PASSES and last < 0) or last == nid:
        return nid
    stats[mm, FILTERED] += 1
    return -1


@kernel
def migrate_in_fault(key, base, target, mm, subs, offset, spte, sflags, shadow, state, acc, pte, fkey, ftoken, fpin,
                     fref, node, lists, pb, bits, ctr, changed, event, stats, scratch):  # fmt: skip
    """migrate_misplaced_folio of the 4 KiB page at ``key`` to node ``target``, in the hinting fault: refused if
    the page is pinned or shared or the target would fall below its high watermark (migrate_balanced_pgdat);
    else under a CLEAR invalidation of the page delivered to the fast subscribers ``subs`` (try_to_migrate_one),
    the content moves to a new frame and the PTE follows. Records ``event`` as the page's last change."""
    f = pte[key]
    if fpin[f] > 0 or fkey[f] != key or node[target, NFREE] <= node[target, WMARK_HIGH]:
        ctr[C.MIGRATIONS_REFUSED] += 1
        stats[mm, FAILED] += 1
        return
    scratch[1] = key - base
    invalidate_start(scratch[1:2], subs, offset, spte, sflags, shadow, state, acc, fkey, ftoken, fpin, node, lists,
                     pb, bits, ctr)  # fmt: skip
    new = alloc_frame(node, lists, pb, bits, fkey, fref, target, key)
    ftoken[new] = ftoken[f]
    pte[key] = new
    free_frame(node, lists, pb, bits, fkey, ftoken, f)
    ctr[C.PAGES_MIGRATED] += 1
    stats[mm, MIGRATED] += 1
    changed[key] = event
    invalidate_end(subs, state)
