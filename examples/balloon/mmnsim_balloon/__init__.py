"""virtio-balloon as an mmnsim policy: a guest returns pages it does not use when the host runs short.

The guest's balloon driver (drivers/virtio/virtio_balloon.c) inflates: it takes pages from its own
allocator and sends their frame numbers to the host, and QEMU drops each of them from the guest's memory
with madvise(MADV_DONTNEED) (hw/virtio/virtio-balloon.c, balloon_inflate_page and
ram_block_discard_range). MADV_DONTNEED raises an invalidation (event CLEAR) that makes KVM zap its sptes
and flush; the host frame is free at once, with no swap I/O. A page the guest later takes back (deflating)
is faulted in afresh, zero-filled.

Here the policy inflates while the host is under pressure (kswapd woke since the last tick, or free
memory is below the high watermark), up to ``pages_per_tick`` pages a tick. The guest gives up pages it
is not using; which pages those are (its free and inactive pages) is modelled by the resident pages that
neither its vCPUs nor anything else touched since the balloon last looked (``referenced`` with
``clear_young``, over a window of ``scan_pages`` pages that moves on every tick). The workload does not
know about the balloon: a page it touches again refaults, as if the guest had deflated it.

With pinned guest memory the balloon stays off: QEMU refuses to inflate while discarding RAM is disabled
(virtio_balloon_inhibited: ram_block_discard_is_disabled, set by VFIO and other pinning users), because
a discarded pinned page frees nothing and leaves the device on a page the guest no longer has.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, Metric, hookimpl, referenced, require
from mmnsim.pagebits import PTE_NONE


@dataclass
class BalloonConfig:
    pages_per_tick: int  # most pages the guests return in one tick
    scan_pages: int  # guest pages looked at per tick for ones the guest does not use
    guest_page_ns: float  # the guest's work per page returned (one vCPU's time)
    host_page_ns: float  # QEMU's work per page returned (host CPU)

    def __post_init__(self) -> None:
        require(self.pages_per_tick >= 1, f"pages_per_tick must be >= 1, got {self.pages_per_tick}")
        require(self.scan_pages >= 1, f"scan_pages must be >= 1, got {self.scan_pages}")
        for key in ("guest_page_ns", "host_page_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")


class Balloon(HostPolicy):
    name = "balloon"
    Config = BalloonConfig
    declared_metrics = (
        Metric("balloon_returned", "pages", int, "guest pages the balloon returned to the host (inflations)"),
        Metric("balloon_pages", "pages", int, "returned pages the guest had not taken back at the end"),
        Metric("balloon_off_pinned", "ticks", int, "ticks a guest under host pressure kept its balloon off "
               "because its memory is pinned"),
    )  # fmt: skip

    def __init__(self, sim, cfg: BalloonConfig):
        super().__init__(sim, cfg)
        self.cursor = {t.name: 0 for t in sim.tenants}
        self.returned = {t.name: np.zeros(t.mm.npages, dtype=bool) for t in sim.tenants}
        self.kswapd_wakeups = 0
        self.metrics = {"balloon_returned": 0, "balloon_off_pinned": 0}

    @hookimpl
    def host_tick(self, sim) -> None:
        wakeups = sim.counter("kswapd_wakeups")
        pressure = wakeups > self.kswapd_wakeups or sim.host.free_frames() < sim.host.watermark().high
        self.kswapd_wakeups = wakeups
        if not pressure:
            return
        budget = self.cfg.pages_per_tick
        for tenant in sim.tenants:
            if tenant.secondary is None or tenant.killed or tenant.mm.exited:
                continue  # not a guest (no KVM), or gone
            if any(c.secondary is not None and c.secondary.pin_mode for c in tenant.clients):
                self.metrics["balloon_off_pinned"] += 1  # virtio_balloon_inhibited()
                continue
            budget -= self._inflate(sim, tenant, budget)
            if budget <= 0:
                break

    def _inflate(self, sim, tenant, budget: int) -> int:
        """Return up to ``budget`` pages of the next window of ``tenant``'s memory that it does not use."""
        mm = tenant.mm
        start = self.cursor[tenant.name]
        end = min(start + self.cfg.scan_pages, mm.npages)
        self.cursor[tenant.name] = end % mm.npages
        pages = start + np.flatnonzero(mm.pte[start:end] >= 0)  # resident
        pages = pages[~sim.host.is_pinned(mm.pte[pages])]
        unused = pages[~referenced(sim, mm.pte[pages], "clear_young")][:budget]
        if unused.size == 0:
            return 0
        returned = mm.discard(unused)  # MADV_DONTNEED: invalidate (CLEAR), zap, free the frames
        self.returned[tenant.name][unused] = True
        self.metrics["balloon_returned"] += returned
        sim.charge(returned * self.cfg.host_page_ns)
        main = tenant.clients[0]
        main.stall(returned * self.cfg.guest_page_ns / main.vcpus)  # one vCPU's work, shared by all
        return returned

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, int]:
        out = {t.name: self.returned[t.name] & (t.mm.pte == PTE_NONE) for t in sim.tenants}
        return {**self.metrics, "balloon_pages": int(sum(int(v.sum()) for v in out.values()))}


@hookimpl
def register_components():
    return [Balloon]
