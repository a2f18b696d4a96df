"""Uniform: every page equally likely."""

from dataclasses import dataclass

import numpy as np

from mmnsim import Workload, WorkloadConfig, hookimpl


@dataclass
class UniformConfig(WorkloadConfig):
    pass


class Uniform(Workload):
    name = "uniform"
    Config = UniformConfig

    def pages(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.npages, n, dtype=np.int64)


@hookimpl
def register_components():
    return [Uniform]
