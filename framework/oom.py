"""The OOM killer and the OOM reaper (mm/oom_kill.c), for when reclaim cannot free memory.

When direct reclaim leaves every node at or below its min watermark (the allocation would fail),
``out_of_memory`` picks the tenant with the highest ``oom_badness`` (resident pages + swap entries + page
tables, plus ``oom_score_adj`` thousandths of RAM and swap; -1000 exempts a tenant) and kills it: every
client of the tenant stops (SIGKILL reaches its vCPUs and device users). The OOM reaper then tears down
the victim's anonymous memory with one non-blockable UNMAP invalidation over its mapping
(__oom_reap_task_mm: mmu_notifier_invalidate_range_start_nonblock). A subscriber that refuses a
non-blockable range (RDMA ODP in mlx5 refuses every one) makes the reaper skip it and try again later, up
to ``MAX_OOM_REAP_RETRIES`` times (oom_reap_task), one attempt a tick here (the kernel sleeps HZ/10
between attempts). When the reaper has reaped, or given up (MMF_OOM_SKIP), the victim's exit completes:
exit_mmap releases the notifier chain and unmaps the rest with blocking allowed, and its devices let go of
their pins (a pinned page survives the reaper as an orphan until then, as get_user_pages' reference keeps
it). While a victim is neither reaped nor skipped, no other tenant is killed (oom_evaluate_task aborts),
and allocations that still find no memory fail.

Simplifications: the reaper runs at the kill (kernels 4.6-5.17 woke it at once; since 5.18 it waits
OOM_REAPER_DELAY, 2 s, for the victim to exit on its own); the victim's exit is modelled as completing when
the reaper is done; tenants are whole processes, each one anonymous private mapping (one VMA).
"""

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import counters as C
from .kernel import count_at_least, count_at_most

if TYPE_CHECKING:
    from .simulation import Simulation, Tenant

log = logging.getLogger("mmnsim")

MAX_OOM_REAP_RETRIES = 10  # mm/oom_kill.c
OOM_SCORE_ADJ_MIN = -1000  # include/uapi/linux/oom.h: never kill
PTRS_PER_PTE = 512  # a page-table page maps 512 pages (x86-64)


@dataclass
class Kill:
    """One OOM kill: who, when, and how the reaper fared."""

    tenant: str
    tick: int
    time_ns: float  # simulated time at the end of the tick of the kill (``tick_done``)
    points: int  # oom_badness at the kill
    reap_attempts: int = 0
    reaped: bool = False  # the reaper tore the memory down (else it gave up: MMF_OOM_SKIP)
    no_reaper: bool = False  # kernel=2008: no reaper; the victim's exit freed its memory

    def __str__(self) -> str:
        how = "reaped" if self.reaped else f"reaper refused {self.reap_attempts}x"
        if self.no_reaper:
            how = "no reaper: freed by its exit"
        return f"{self.tenant} in tick {self.tick} (by {self.time_ns / 1e9:.3f} s; badness {self.points}, {how})"


class OOMKiller:
    """out_of_memory() and the OOM reaper for one simulation."""

    def __init__(self, sim: "Simulation"):
        self.sim = sim
        self.kills: list[Kill] = []
        self._reaping: dict[str, tuple[Tenant, Kill]] = {}  # victims the reaper still works on

    def badness(self, tenant: "Tenant") -> int | None:
        """oom_badness: the victim score, or None for a tenant that cannot be killed."""
        mm = tenant.mm
        if tenant.killed or mm.exited or tenant.oom_score_adj <= OOM_SCORE_ADJ_MIN:
            return None
        resident = int(count_at_least(mm.pte, 0))
        swapped = int(count_at_most(mm.pte, -2))
        page_tables = -(-(resident + swapped) // PTRS_PER_PTE)  # mm_pgtables_bytes / PAGE_SIZE, at least
        host = self.sim.host
        total = host.nframes + host._sw.key.size  # totalpages: RAM + swap
        return resident + swapped + page_tables + tenant.oom_score_adj * total // 1000

    def out_of_memory(self) -> "Tenant | None":
        """Kill the worst tenant, unless a victim is still being reaped; return the victim killed."""
        if self._reaping:
            return None  # oom_evaluate_task: an earlier victim without MMF_OOM_SKIP aborts the selection
        scored = [(points, t) for t in self.sim.tenants if (points := self.badness(t)) is not None]
        if not scored:
            return None  # nothing killable: the allocation fails
        points, victim = max(scored, key=lambda pair: pair[0])  # the first of equals, as select_bad_process
        self.kill(victim, points)
        return victim

    def kill(self, tenant: "Tenant", points: int = 0) -> None:
        """oom_kill_process: stop every client of ``tenant`` and queue it for the reaper."""
        sim = self.sim
        sim.pinned_peak = max(sim.pinned_peak, sim.host.pinned_pages())  # the peak is at the kill, not at tick end
        tenant.killed = True
        sim.host._ctr[C.OOM_KILLS] += 1
        record = Kill(tenant.name, sim.tick, sim.time_ns, points)
        self.kills.append(record)
        log.warning("out of memory: killed %s (badness %d) at tick %d", tenant.name, points, sim.tick)
        self._reaping[tenant.name] = (tenant, record)
        self.reap()

    def reap(self) -> None:
        """One attempt of the reaper on every victim it still works on (oom_reap_task)."""
        for name, (tenant, record) in list(self._reaping.items()):
            if not self.sim.kernel.oom_reaper:  # before 4.6 no reaper: the victim's own exit frees its memory
                record.no_reaper = True
                del self._reaping[name]
                tenant.mm.exit()
                continue
            record.reap_attempts += 1
            reaped = tenant.mm.oom_reap()
            if reaped is None:
                self.sim.host._ctr[C.OOM_REAPER_REFUSALS] += 1
                if record.reap_attempts < MAX_OOM_REAP_RETRIES:
                    continue
            else:
                self.sim.host._ctr[C.OOM_REAPED_PAGES] += reaped
                record.reaped = True
            del self._reaping[name]  # reaped, or MMF_OOM_SKIP: the victim's exit completes
            tenant.mm.exit()

    def tick_done(self) -> None:
        """Date this tick's kills: the tick's end is when its time is known."""
        for kill in self.kills:
            if kill.tick == self.sim.tick:
                kill.time_ns = self.sim.time_ns

    def victims(self) -> str:
        """The kills so far, for the results (``oom_victims``)."""
        return "; ".join(map(str, self.kills))
