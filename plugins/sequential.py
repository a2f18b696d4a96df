"""Sequential scan: pages in address order, wrapping around (a streaming or scanning client)."""

from dataclasses import dataclass

import numpy as np

from mmnsim import Workload, WorkloadConfig, hookimpl


@dataclass
class SequentialConfig(WorkloadConfig):
    pass


class Sequential(Workload):
    name = "sequential"
    Config = SequentialConfig

    def __init__(self, cfg, npages, rng):
        super().__init__(cfg, npages, rng)
        self.next = 0

    def pages(self, n: int) -> np.ndarray:
        out = (self.next + np.arange(n, dtype=np.int64)) % self.npages
        self.next = int((self.next + n) % self.npages)
        return out


@hookimpl
def register_components():
    return [Sequential]
