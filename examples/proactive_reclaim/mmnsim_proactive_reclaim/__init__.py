"""Proactive reclaim as an mmnsim policy: every few ticks, swap out a share of each tenant's coldest memory.

A userspace agent (Meta's senpai, Google's far-memory agent) reclaims a cgroup's cold memory before the host
runs short by writing to its ``memory.reclaim`` file (mm/memcontrol.c memory_reclaim, which runs
try_to_free_mem_cgroup_pages: the same LRU scan, folio_referenced and pageout as kswapd, on that cgroup's
pages), and watches the refaults it causes (memory.stat's workingset_refault_anon). Which pages are cold is
decided here by age, as DAMON_RECLAIM decides (mm/damon/reclaim.c: regions not accessed for ``min_age``):

* every ``every_ticks`` ticks a round runs; each tenant's folios (``lru_folios``) are asked whether they were
  used since the last round, clearing the answer for the next (``referenced`` with ``clear_young``: the
  PTE's young bit and KVM's through its ``clear_young``), and each folio's age counts the rounds in a row
  it was found unused;
* the folios at least ``min_idle_rounds`` old are reclaimed, oldest first, until ``share`` of the tenant's
  resident memory is (``swap_out``: a CLEAR invalidation per page, KVM zaps); the round's CPU work is
  charged as reclaim's (``charge_reclaim``: each folio examined, each page written);
* the tenant's refaults (``mm.counters().refaults``: pages read back from swap) are counted from the first
  round on.

Pinned folios (pin mode: every page KVM maps) are not candidates: ``lru_folios`` leaves them out, as
reclaim's scan does, and the policy counts them (``proactive_pinned_skipped``) and reclaims what is left.

Simplifications: one age per folio, kept by the policy (DAMON keeps one per region); the aging pass asks
every folio of the tenant each round (DAMON samples); clearing the young bits also clears them for kswapd,
which the kernel avoids with PG_young (the model has no such flag), so a page used before a round and not
since looks old to kswapd too.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, Metric, charge_reclaim, hookimpl, lru_folios, referenced, require, swap_out


@dataclass
class ProactiveReclaimConfig:
    every_ticks: int  # a round every this many ticks (the agent's period)
    share: float  # most of each tenant's resident memory one round reclaims (the amount written to memory.reclaim)
    min_idle_rounds: int  # a folio is cold once this many rounds in a row found it unused (DAMON_RECLAIM min_age)

    def __post_init__(self) -> None:
        require(self.every_ticks >= 1, f"every_ticks must be >= 1, got {self.every_ticks}")
        require(0 < self.share <= 1, f"share must be in (0, 1], got {self.share}")
        require(self.min_idle_rounds >= 1, f"min_idle_rounds must be >= 1, got {self.min_idle_rounds}")


class ProactiveReclaim(HostPolicy):
    name = "proactive_reclaim"
    Config = ProactiveReclaimConfig
    declared_metrics = (
        Metric("proactive_rounds", "rounds", int, "rounds of proactive reclaim run"),
        Metric("proactive_reclaimed", "pages", int, "pages proactive reclaim swapped out"),
        Metric("proactive_refaults", "pages", int, "pages of its tenants read back from swap since its first round "
               "(whoever evicted them)", kernel="workingset_refault_anon"),
        Metric("proactive_pinned_skipped", "pages", int, "pinned pages its rounds could not reclaim, summed over "
               "rounds"),
        Metric("proactive_cpu_ns", "ns", float, "host CPU time its rounds charged (reclaim_scan_ns per page "
               "examined, swap_out_ns per page written)"),
    )  # fmt: skip

    def __init__(self, sim, cfg: ProactiveReclaimConfig):
        super().__init__(sim, cfg)
        self.age = [np.zeros(t.mm.npages, dtype=np.int32) for t in sim.tenants]  # rounds unused, per first page
        self.hand = [0] * len(sim.tenants)  # where each tenant's next round starts among equally old folios
        self.refaults_before: list[int | None] = [None] * len(sim.tenants)  # at the tenant's first round
        self.metrics = {"proactive_rounds": 0, "proactive_reclaimed": 0, "proactive_pinned_skipped": 0,
                        "proactive_cpu_ns": 0.0}  # fmt: skip

    @hookimpl
    def host_tick(self, sim) -> None:
        if sim.tick % self.cfg.every_ticks:
            return
        self.metrics["proactive_rounds"] += 1
        for i, tenant in enumerate(sim.tenants):
            if not (tenant.killed or tenant.mm.exited):  # an OOM victim's memory is the reaper's
                self._round(sim, i, tenant.mm)

    def _round(self, sim, i: int, mm) -> None:
        """Age tenant ``i``'s folios by one round and reclaim its share of the cold ones, oldest first."""
        counters = mm.counters()
        if self.refaults_before[i] is None:
            self.refaults_before[i] = counters.refaults
        self.metrics["proactive_pinned_skipped"] += counters.pinned
        folios = lru_folios(sim, mm, self.hand[i])
        if folios.frames.size == 0:
            return
        used = referenced(sim, folios.frames, "clear_young")
        age = np.where(used, 0, self.age[i][folios.pages] + 1)
        self.age[i][folios.pages] = age
        cold = np.flatnonzero(age >= self.cfg.min_idle_rounds)
        cold = cold[np.argsort(-age[cold], kind="stable")]  # oldest first; equals in the scan's order
        quota = int(self.cfg.share * counters.resident)
        take = cold[: int(np.searchsorted(np.cumsum(folios.npages[cold]), quota, side="right"))]
        reclaimed = swap_out(sim, folios.frames[take]) if take.size else 0
        if take.size:
            self.age[i][folios.pages[take]] = 0  # a page that comes back starts young
            self.hand[i] = int(folios.frames[take[-1]]) + 1
        self.metrics["proactive_reclaimed"] += reclaimed
        self.metrics["proactive_cpu_ns"] += charge_reclaim(sim, int(folios.npages.sum()), reclaimed)

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        pairs = zip(sim.tenants, self.refaults_before, strict=True)
        refaults = sum(t.mm.counters().refaults - before for t, before in pairs if before is not None)
        return {**self.metrics, "proactive_refaults": refaults}


@hookimpl
def register_components():
    return [ProactiveReclaim]
