"""Fragmentation: a process that keeps dropping pages here and there, as a page cache does under churn.

Each tick, ``drop_fraction`` of the named process's resident pages, chosen at random, are discarded
(MADV_DONTNEED page by page), while its own workload keeps touching pages, which refault into whatever
frames are free. Its memory ends up spread thinly over many pageblocks, and the host's free memory is
scattered in holes too small for a transparent huge page: the long-running, fragmented host of the
defragmentation scenario.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import ConfigError, HostPolicy, Metric, hookimpl, require


@dataclass
class FragmentConfig:
    process: str  # the tenant whose pages churn
    drop_fraction: float  # share of its resident pages dropped each tick
    until_tick: int  # stop churning then (-1: never)

    def __post_init__(self) -> None:
        require(0.0 <= self.drop_fraction <= 1.0, f"drop_fraction must be in [0, 1], got {self.drop_fraction}")


class Fragment(HostPolicy):
    name = "fragment"
    Config = FragmentConfig
    declared_metrics = (
        Metric("fragment_pages_dropped", "pages", int, "pages the churning process discarded (MADV_DONTNEED)"),
    )

    def __init__(self, sim, cfg: FragmentConfig):
        super().__init__(sim, cfg)
        names = [t.name for t in sim.tenants]
        if cfg.process not in names:
            raise ConfigError(f"policies.fragment.process: {cfg.process!r} is not one of {', '.join(names)}")
        self.mm = next(t.mm for t in sim.tenants if t.name == cfg.process)
        self.dropped = 0

    @hookimpl
    def host_tick(self, sim) -> None:
        if self.cfg.until_tick >= 0 and sim.tick >= self.cfg.until_tick:
            return
        resident = np.flatnonzero(self.mm.pte >= 0)
        count = int(resident.size * self.cfg.drop_fraction)
        if count:
            self.dropped += self.mm.discard(sim.rng.choice(resident, count, replace=False))

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        return {"fragment_pages_dropped": self.dropped}


@hookimpl
def register_components():
    return [Fragment]
