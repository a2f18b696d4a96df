"""Zipf: page of popularity rank r accessed with probability proportional to 1 / r^exponent.

Ranks are scattered over the address space by a random permutation (hot guest pages are not contiguous).
Sampling uses Vose's alias method: O(1) per access from one 64-bit random draw, with one 64-bit table
entry per page (its keep threshold and its alias, packed so one cache miss fetches both).
"""

from dataclasses import dataclass

import numpy as np
from numba import njit

from mmnsim import AHEAD, U, Workload, WorkloadConfig, hookimpl, kernel, pcg64, prefetch, require


@dataclass
class ZipfConfig(WorkloadConfig):
    exponent: float

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.exponent >= 0.0, f"exponent must be >= 0, got {self.exponent}")


@njit(cache=True)
def _alias_table(order, exponent):
    """Vose's alias method over pages, where ``order[r]`` is the page of rank r.

    Returns one uint64 per page: its alias in the high 32 bits and, in the low 32, the chance of keeping
    the page itself as a uint32 threshold (pages left over keep themselves: threshold all ones).
    """
    n = order.size
    total = 0.0
    for r in range(n):
        total += (r + 1.0) ** -exponent
    scaled = np.empty(n, dtype=np.float64)  # n * P(page)
    for r in range(n):
        scaled[order[r]] = (r + 1.0) ** -exponent * n / total
    table = np.empty(n, dtype=np.uint64)
    work = np.empty(n, dtype=np.int32)  # small pages from the front, large from the back
    ns, nl = 0, 0
    for i in range(n):
        table[i] = (np.uint64(i) << np.uint64(32)) | _KEEP_ALWAYS
        if scaled[i] < 1.0:
            work[ns] = i
            ns += 1
        else:
            work[n - 1 - nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        s = work[ns - 1]
        ns -= 1
        g = work[n - nl]
        nl -= 1
        keep = np.uint64(min(scaled[s] * 4294967296.0, 4294967295.0))
        table[s] = (np.uint64(g) << np.uint64(32)) | keep
        scaled[g] = scaled[g] + scaled[s] - 1.0
        if scaled[g] < 1.0:
            work[ns] = g
            ns += 1
        else:
            nl += 1
            work[n - nl] = g
    return table


_KEEP_ALWAYS = np.uint64(0xFFFFFFFF)


@kernel
def _sample(st, ring, table, out):
    """``out.size`` pages, one per 64-bit draw of the generator: the high half picks a bucket, the low half
    the bucket or its alias.

    The table is megabytes read at random, and the simulator's own state keeps evicting it from the
    caches: each draw is made ``AHEAD`` pages early and its table entry prefetched then, the draw kept in
    ``ring`` until its turn (the generator's serial arithmetic overlaps the table's cache misses).
    """
    n = np.uint64(table.size)
    low = np.uint64(0xFFFFFFFF)
    wrap = ring.size - 1  # a power of two, more than AHEAD
    for i in range(min(AHEAD, out.size)):
        r = pcg64.next_uint64(st)
        ring[U(i)] = r
        prefetch(table, ((r >> np.uint64(32)) * n) >> np.uint64(32))
    for i in range(out.size):
        if i + AHEAD < out.size:
            r = pcg64.next_uint64(st)
            ring[U((i + AHEAD) & wrap)] = r
            prefetch(table, ((r >> np.uint64(32)) * n) >> np.uint64(32))
        r = ring[U(i & wrap)]
        bucket = ((r >> np.uint64(32)) * n) >> np.uint64(32)
        entry = table[bucket]
        out[U(i)] = bucket if (r & low) < (entry & low) else entry >> np.uint64(32)


class Zipf(Workload):
    name = "zipf"
    Config = ZipfConfig
    # The alias table (uint64) it keeps; building it also takes 16 B a page of scratch (order, scaled, work),
    # freed before the host's tables are allocated (simulation.py builds workloads first).
    memory_per_page = 8

    def __init__(self, cfg, npages, rng):
        super().__init__(cfg, npages, rng)
        order = np.arange(npages, dtype=np.int32)
        rng.shuffle(order)
        self.table = _alias_table(order, float(cfg.exponent))
        self.ring = np.empty(1 << AHEAD.bit_length(), dtype=np.uint64)  # a power of two > AHEAD

    def pages(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int32)
        st = pcg64.load(self.rng.bit_generator)  # the generator's random_raw stream, drawn in numba
        _sample(st, self.ring, self.table, out)
        pcg64.store(self.rng.bit_generator, st)
        return out


@hookimpl
def register_components():
    return [Zipf]
