"""Hot/cold: a hot set taking most accesses, which moves to a fresh part of memory now and then.

The hot set is ``hot_fraction`` of the pages, a contiguous window (wrapping); a ``hot_probability`` share of
accesses fall in it, uniformly, the rest uniformly on the other pages. Every ``shift_every`` accesses the
window moves on by its own size, so yesterday's hot pages turn cold (0: never).
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import Workload, WorkloadConfig, hookimpl, require


@dataclass
class HotColdConfig(WorkloadConfig):
    hot_fraction: float
    hot_probability: float
    shift_every: int

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 < self.hot_fraction < 1.0, f"hot_fraction must be in (0, 1), got {self.hot_fraction}")
        require(0.0 <= self.hot_probability <= 1.0, f"hot_probability must be in [0, 1], got {self.hot_probability}")
        require(self.shift_every >= 0, f"shift_every must be >= 0, got {self.shift_every}")


class HotCold(Workload):
    name = "hotcold"
    Config = HotColdConfig

    def __init__(self, cfg, npages, rng):
        super().__init__(cfg, npages, rng)
        self.hot = max(1, min(npages - 1, int(round(cfg.hot_fraction * npages))))
        self.issued = 0

    def pages(self, n: int) -> np.ndarray:
        i = self.issued + np.arange(n, dtype=np.int64)
        self.issued += n
        shifts = i // self.cfg.shift_every if self.cfg.shift_every else np.zeros(n, dtype=np.int64)
        window = (shifts * self.hot) % self.npages
        hot = self.rng.random(n) < self.cfg.hot_probability
        offset = np.where(
            hot,
            self.rng.integers(0, self.hot, n, dtype=np.int64),
            self.hot + self.rng.integers(0, self.npages - self.hot, n, dtype=np.int64),
        )
        return (window + offset) % self.npages


@hookimpl
def register_components():
    return [HotCold]
