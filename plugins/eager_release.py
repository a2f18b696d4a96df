"""Eager release: the strawman of the 2008 thread, "why can't it release them by default?".

Every ``every_ticks`` ticks each secondary MMU drops all of its translations (event CLEAR over the whole
mm, delivered to the device alone), paying the zap and the TLB flush now and a secondary fault on every
page its clients touch again. In pin mode this also drops the pins, so between releases reclaim may swap
the pages out. Run it beside notifier mode to measure what releasing by default costs.

``how`` picks the operation (the real twin's ``real.eager_release`` has the last two, docs/real.md):
``clear`` (the default) is the release above; ``dontneed`` is MADV_DONTNEED of the whole mm
(mm/madvise.c madvise_dontneed_single_vma -> zap_page_range_single: one CLEAR invalidation to every
subscriber, and the host pages are freed too, so the next touch is a host fault on a zero-filled page);
``mprotect`` is an mprotect(PROT_NONE) and mprotect(PROT_READ|PROT_WRITE) round trip of the whole mm
(mm/mprotect.c change_protection: one PROTECTION_VMA invalidation each; the pages stay, the secondary
refaults). Those two go through the host's operations, so every subscriber of the mm is told.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import Event, HostPolicy, Metric, NotifierRange, hookimpl, require

HOW = ("clear", "dontneed", "mprotect")


@dataclass
class EagerReleaseConfig:
    every_ticks: int
    how: str = "clear"

    def __post_init__(self) -> None:
        require(self.every_ticks >= 0, f"every_ticks must be >= 0 (0: never), got {self.every_ticks}")
        require(self.how in HOW, f"how must be one of {', '.join(HOW)}, got {self.how!r}")


class EagerRelease(HostPolicy):
    name = "eager_release"
    Config = EagerReleaseConfig
    declared_metrics = (
        Metric("eager_releases", "invalidations", int, "releases the policy made: whole-mm CLEAR invalidations "
               "(how=clear), MADV_DONTNEEDs or mprotect round trips of a guest's whole mm"),
    )  # fmt: skip

    def __init__(self, sim, cfg: EagerReleaseConfig):
        super().__init__(sim, cfg)
        self.releases = 0

    @hookimpl
    def host_tick(self, sim) -> None:
        if not self.cfg.every_ticks or sim.tick % self.cfg.every_ticks:
            return
        released = set()
        for sec in sim.secondaries:
            if sec.mm.exited or id(sec.mm) in released:
                continue
            if self.cfg.how == "clear":
                ranges = NotifierRange(sec.mm, np.array([0]), np.array([sec.mm.npages]), Event.CLEAR)
                sec.invalidate_self(ranges)
            else:
                released.add(id(sec.mm))  # one host operation per mm, whatever subscribes to it
                self._host_release(sec.mm)
            self.releases += 1

    def _host_release(self, mm) -> None:
        """MADV_DONTNEED or the mprotect round trip of the whole mm (``how``)."""
        if self.cfg.how == "dontneed":
            mm.madvise_dontneed(0, mm.npages)
        else:
            mm.mprotect(0, mm.npages, "none")
            mm.mprotect(0, mm.npages, "rw")

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        return {"eager_releases": self.releases}


@hookimpl
def register_components():
    return [EagerRelease]
