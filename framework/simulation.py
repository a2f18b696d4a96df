"""A simulation run: the host, its tenants (guests and processes), their clients, and the tick loop.

Each tick: host policies run (``host_tick``), every tenant's client runs one batch of accesses, the
invariants are checked, and one row of the time series is recorded. A batch runs in the numba access
kernel; when the kernel stops to ask for reclaim (kswapd at the low watermark, direct reclaim at min, or
a notifier call for an exact-CLOCK victim) the loop in ``run_client`` serves it and resumes the kernel.

Time: every access and fault costs nanoseconds from the cost model. A tenant's vCPUs share its
accesses evenly, so its time for a tick is its access and fault time divided by its vCPU count, plus
what stalled all of its vCPUs (TLB-flush IPIs, direct reclaim). The tick lasts as long as the slowest
tenant; kswapd's work is counted as host CPU time, in parallel.
"""

import logging
import time
from collections.abc import Iterable

import numpy as np
from omegaconf import DictConfig

from . import counters as C
from . import invariants
from .access import (
    DIRECT_RECLAIM,
    DONE,
    EVICT_ONE,
    K_VICTIM,
    LIVELOCK,
    WAKE_KSWAPD,
    new_kernel_state,
    run_accesses,
)
from .components import Component, HostPolicy
from .discovery import Registry, plugin_manager
from .frames import KSWAPD_FUTILE, OOM_FLAGS, REG_FLAGS
from .host import Host
from .mm import MM
from .notifier import PluginError
from .reclaim import swap_out
from .secondary import IN_PROGRESS, SecondaryMMU
from .settings import load_settings
from .workload import PAGE_DTYPE, WorkloadStream

log = logging.getLogger("mmnsim")

SWAP_CLUSTER_MAX = 32  # pages direct reclaim asks for at least (mm/vmscan.c)
_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_U8 = np.zeros(0, dtype=np.uint8)
_EMPTY_STATE = np.zeros(3, dtype=np.int64)


class InvariantViolation(RuntimeError):
    """Raised by a run with engine.stop_on_violation when an invariant breaks."""


class Tenant:
    """A guest (or process): its mm, the secondary MMU its clients go through, and its workload."""

    def __init__(self, name: str, mm: MM, vcpu_node: np.ndarray, stream: WorkloadStream):
        self.name = name
        self.mm = mm
        self.vcpu_node = vcpu_node.astype(np.int32)
        self.stream = stream
        self.secondary: SecondaryMMU | None = None
        self.elapsed_ns = 0.0  # time of one vCPU, summed over ticks
        self.stall_ns = 0.0  # part of elapsed_ns spent not running the workload
        self._pending_stall = 0.0

    @property
    def vcpus(self) -> int:
        return int(self.vcpu_node.size)

    def stall(self, ns: float) -> None:
        """All of this tenant's vCPUs lose ``ns`` (a TLB-flush IPI, a direct-reclaim stall)."""
        self._pending_stall += ns


class Simulation:
    def __init__(self, cfg: DictConfig, plugins: Iterable[object] = ()):
        """Build the run described by ``cfg``; ``plugins`` are extra plugin modules (or objects) to
        register beside the discovered ones, for notebooks and tests."""
        self.cfg = cfg
        self.pm = plugin_manager()
        for plugin in plugins:
            self.pm.register(plugin)
        self.registry = Registry.from_plugins(self.pm)
        settings = load_settings(cfg, self.registry)
        self.seed = settings.seed
        self.host_cfg = settings.host
        self.engine = settings.engine
        self.costs = settings.costs
        specs = settings.tenants

        # Workloads first: building their tables needs scratch memory, better taken before the host's.
        seeds = np.random.SeedSequence(self.seed).spawn(len(specs) + 1)
        self.rng = np.random.default_rng(seeds[-1])  # for host policies
        streams = []
        for spec, seed in zip(specs, seeds, strict=False):
            cls, wcfg = spec.workload
            streams.append(WorkloadStream(cls(wcfg, spec.pages, np.random.default_rng(seed))))

        self.host = Host(self.host_cfg, [s.pages for s in specs])
        self.mms: list[MM] = []
        self.tenants: list[Tenant] = []
        self.secondaries: list[SecondaryMMU] = []
        for i, (spec, stream) in enumerate(zip(specs, streams, strict=True)):
            mm = MM(self, i, spec.name, spec.pages)
            mm.mmap(0, spec.pages, "rw")
            self.mms.append(mm)
            tenant = Tenant(spec.name, mm, spec.vcpu_nodes, stream)
            if spec.secondary is not None:
                cls, scfg = spec.secondary
                tenant.secondary = cls(self, tenant, scfg)
                self.secondaries.append(tenant.secondary)
            self.tenants.append(tenant)

        self.exact_clock = False  # set by a policy through use_exact_clock()
        self.policies: list[HostPolicy] = [cls(self, pcfg) for cls, pcfg in settings.policies.values()]
        for comp in [*self.policies, *self.secondaries]:
            self.pm.register(comp, name=f"{comp.kind}:{getattr(comp, 'label', comp.name)}")
        for sec in self.secondaries:
            sec.attach()

        self.tick = 0
        self.time_ns = 0.0
        self.host_cpu_ns = 0.0
        self.violations = np.zeros(len(invariants.KINDS), dtype=np.int64)
        self.violation_messages: list[str] = []
        self.pinned_peak = 0
        self.timeseries: list[dict[str, float]] = []
        self._charge_to: Tenant | None = None

    # -- services for plugins --

    def use_exact_clock(self) -> None:
        """Make allocations evict one page at a time with the textbook CLOCK (see ``mmnsim.access``)."""
        self.exact_clock = True

    def charge(self, ns: float) -> None:
        """Account ``ns`` of host work: to the stalled client in direct reclaim, else to host CPU time."""
        if self._charge_to is not None:
            self._charge_to.stall(ns)
        else:
            self.host_cpu_ns += ns

    def secondaries_of(self, mm: MM) -> list[SecondaryMMU]:
        return [s for s in self.secondaries if s.mm is mm]

    def mm_of_key(self, key: int) -> MM:
        return self.mms[int(np.searchsorted(self.host.pt.mm_base, key, side="right")) - 1]

    def components(self) -> list[Component]:
        return [*self.policies, *self.secondaries, *(t.stream.workload for t in self.tenants)]

    # -- running --

    def run(self) -> dict[str, float]:
        start = time.perf_counter()
        while not all(t.stream.done for t in self.tenants):
            self.step()
        metrics = self.metrics()
        metrics["wall_seconds"] = time.perf_counter() - start
        return metrics

    def step(self) -> None:
        """One tick."""
        self.host.ft.reg[REG_FLAGS] &= ~OOM_FLAGS
        self.pm.hook.host_tick(sim=self)
        tick_ns = 0.0
        for tenant in self.tenants:
            batch = tenant.stream.next_batch(self.engine.accesses_per_tick)
            before = tenant.elapsed_ns
            if batch is not None:
                self.run_client(tenant.mm, tenant.secondary, *batch, tenant=tenant)
            self._settle_stalls(tenant)
            tick_ns = max(tick_ns, tenant.elapsed_ns - before)
        self.time_ns += tick_ns
        if self.engine.check_invariants:
            self.check_invariants()
        self.pinned_peak = max(self.pinned_peak, self.host.pinned_pages())
        if self.engine.timeseries:
            self.timeseries.append(self._sample())
        self.tick += 1

    def run_client(
        self,
        mm: MM,
        secondary: SecondaryMMU | None,
        pages: np.ndarray,
        writes: np.ndarray | None = None,
        tenant: Tenant | None = None,
    ) -> None:
        """Run one batch of accesses by a client of ``mm`` (through ``secondary``, or the CPU)."""
        host = self.host
        pages = np.ascontiguousarray(pages, dtype=PAGE_DTYPE)
        if pages.size and (pages.min() < 0 or pages.max() >= mm.npages):
            raise ValueError(f"pages outside mm '{mm.name}' (0..{mm.npages - 1})")
        writes = np.zeros(pages.size, dtype=np.bool_) if writes is None else np.ascontiguousarray(writes, np.bool_)
        tenant = tenant or self._tenant_of(mm)
        if secondary is not None:
            spte, sflags, sstate = secondary.spte, secondary.sflags, secondary.state
        else:
            spte, sflags, sstate = _EMPTY_I32, _EMPTY_U8, _EMPTY_STATE
        vcpu_node = tenant.vcpu_node if tenant is not None else np.zeros(1, dtype=np.int32)
        ks = new_kernel_state()
        before = host.ctr.copy()
        self._charge_to = tenant
        try:
            while True:
                status = run_accesses(
                    pages, writes, ks, host.pt, host.ft, host.sw, host.ctr, mm.index,
                    spte, sflags, sstate, vcpu_node, self.exact_clock, self.engine.check_accesses,
                )  # fmt: skip
                if status == DONE:
                    break
                if status == WAKE_KSWAPD:
                    self._wake_kswapd()
                elif status == DIRECT_RECLAIM:
                    host.ctr[C.DIRECT_RECLAIMS] += 1
                    self._reclaim(max(SWAP_CLUSTER_MAX, host.pages_to_low()), direct=True)
                elif status == EVICT_ONE:
                    if swap_out(self, np.array([ks[K_VICTIM]])) == 0:
                        host.ctr[C.OOM_EVENTS] += 1
                        host.ft.reg[REG_FLAGS] |= OOM_FLAGS
                elif status == LIVELOCK:
                    raise PluginError(
                        f"secondary MMU '{secondary.label}' kept its fault path retrying: state[IN_PROGRESS] is "
                        f"{int(sstate[IN_PROGRESS])} outside any invalidation (begin_invalidate and end_invalidate "
                        "must pair up) or its sequence moves on every try"
                    )
        finally:
            self._charge_to = None
        if tenant is not None:
            self._account(tenant, secondary, host.ctr - before)

    def _tenant_of(self, mm: MM) -> Tenant | None:
        return next((t for t in self.tenants if t.mm is mm), None)

    def _wake_kswapd(self) -> None:
        """kswapd, run to completion: like kswapd_shrink_node, it asks for the high watermark's worth of
        pages (at least what brings every node back above high)."""
        self.host.ctr[C.KSWAPD_WAKEUPS] += 1
        charge_to, self._charge_to = self._charge_to, None  # kswapd runs on its own CPU
        try:
            freed = self._reclaim(max(self.host.pages_to_high(), self.host.high_watermarks()), direct=False)
        finally:
            self._charge_to = charge_to
        if freed == 0:
            self.host.ft.reg[REG_FLAGS] |= KSWAPD_FUTILE

    def _reclaim(self, nr_pages: int, direct: bool) -> int:
        freed = self.pm.hook.reclaim(sim=self, nr_pages=nr_pages, direct=direct)
        return int(freed or 0)

    def _account(self, tenant: Tenant, secondary: SecondaryMMU | None, d: np.ndarray) -> None:
        c = self.costs
        access = d[C.ACCESSES] * c.access_ns + d[C.REMOTE_ACCESSES] * c.access_ns * (c.remote_access_factor - 1)
        faults = d[C.MINOR_FAULTS] * c.minor_fault_ns + d[C.MAJOR_FAULTS] * c.swap_in_ns
        if secondary is not None:
            faults += (d[C.SECONDARY_FAULTS] + d[C.FAULT_RETRIES]) * secondary.fault_ns
        tenant.elapsed_ns += (access + faults) / tenant.vcpus
        tenant.stall_ns += faults / tenant.vcpus

    def _settle_stalls(self, tenant: Tenant) -> None:
        tenant.elapsed_ns += tenant._pending_stall
        tenant.stall_ns += tenant._pending_stall
        tenant._pending_stall = 0.0

    def check_invariants(self) -> invariants.Report:
        report = invariants.check(self)
        if report:
            self.violations += report.counts
            new = [m for m in report.messages if m not in self.violation_messages]
            for message in new:
                log.warning("tick %d: invariant violated: %s", self.tick, message)
            self.violation_messages.extend(new)
            if self.engine.stop_on_violation:
                raise InvariantViolation(f"tick {self.tick}: " + "; ".join(report.messages))
        return report

    # -- results --

    def _sample(self) -> dict[str, float]:
        row: dict[str, float] = {"tick": self.tick, "sim_time_ns": self.time_ns}
        row.update(C.as_dict(self.host.ctr))
        row["free_frames"] = self.host.free_frames()
        row["pinned_pages"] = self.host.pinned_pages()
        row["swap_used"] = self.host.swap_used()
        row["resident_pages"] = int(sum(np.count_nonzero(mm.pte >= 0) for mm in self.mms))
        row["secondary_mapped_pages"] = sum(s.mapped_pages() for s in self.secondaries)
        return row

    def metrics(self) -> dict[str, float]:
        """Every metric of the run so far, by name."""
        out: dict[str, float] = dict(C.as_dict(self.host.ctr))
        for contribution in self.pm.hook.collect_metrics(sim=self):
            for name, value in (contribution or {}).items():
                out[name] = out.get(name, 0.0) + float(value)
        for name in ("pages_zapped", "tlb_flushes", "tlb_flush_ipis", "flush_cost_ns"):
            out.setdefault(name, 0.0)
        self.pinned_peak = max(self.pinned_peak, self.host.pinned_pages())
        out["pinned_pages"] = self.host.pinned_pages()
        out["pinned_pages_peak"] = self.pinned_peak
        out["swap_used"] = self.host.swap_used()
        out["free_frames"] = self.host.free_frames()
        for kind, count in zip(invariants.KINDS, self.violations, strict=True):
            out[f"{kind}_violations"] = out.get(f"{kind}_violations", 0) + int(count)
        out["invariant_violations"] = int(sum(out[f"{k}_violations"] for k in invariants.KINDS))
        out["ticks"] = self.tick
        out["sim_time_ns"] = self.time_ns
        out["host_cpu_ns"] = self.host_cpu_ns
        elapsed = sum(t.elapsed_ns for t in self.tenants)
        stall = sum(t.stall_ns for t in self.tenants)
        out["guest_stall_ns"] = stall
        out["stall_fraction"] = stall / elapsed if elapsed else 0.0
        out["remote_access_fraction"] = out["remote_accesses"] / out["accesses"] if out["accesses"] else 0.0
        return out

    def timeseries_rows(self) -> list[dict[str, float]]:
        return self.timeseries
