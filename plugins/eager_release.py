"""Eager release: the strawman of the 2008 thread, "why can't it release them by default?".

Every ``every_ticks`` ticks each secondary MMU drops all of its translations (event CLEAR over the whole
mm, delivered to the device alone), paying the zap and the TLB flush now and a secondary fault on every
page its clients touch again. In pin mode this also drops the pins, so between releases reclaim may swap
the pages out. Run it beside notifier mode to measure what releasing by default costs.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import Event, HostPolicy, Metric, NotifierRange, hookimpl, require


@dataclass
class EagerReleaseConfig:
    every_ticks: int

    def __post_init__(self) -> None:
        require(self.every_ticks >= 0, f"every_ticks must be >= 0 (0: never), got {self.every_ticks}")


class EagerRelease(HostPolicy):
    name = "eager_release"
    Config = EagerReleaseConfig
    declared_metrics = (
        Metric("eager_releases", "invalidations", int, "whole-mm CLEAR invalidations the policy raised"),
    )

    def __init__(self, sim, cfg: EagerReleaseConfig):
        super().__init__(sim, cfg)
        self.releases = 0

    @hookimpl
    def host_tick(self, sim) -> None:
        if not self.cfg.every_ticks or sim.tick % self.cfg.every_ticks:
            return
        for sec in sim.secondaries:
            if sec.mm.exited:
                continue
            ranges = NotifierRange(sec.mm, np.array([0]), np.array([sec.mm.npages]), Event.CLEAR)
            sec.invalidate_self(ranges)
            self.releases += 1

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        return {"eager_releases": self.releases}


@hookimpl
def register_components():
    return [EagerRelease]
