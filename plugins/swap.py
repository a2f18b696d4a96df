"""Swap: reclaim anonymous memory to the swap device when free memory runs low.

Two modes:

* ``lru`` (default), an LRU approximation in batches: a hand sweeps the frames (pinned ones are skipped,
  as reclaim gives up on maybe-pinned pages); each candidate is tested for recent use through its PTE's
  young bit and every subscribed secondary MMU's ``clear_flush_young`` (or ``clear_young``); pages found
  young get a second chance, the rest are swapped out, their secondary translations invalidated first.
  kswapd runs when an allocation finds a node below its low watermark and reclaims up to the high one;
  direct reclaim runs when the allocation reaches the min watermark.
* ``clock``, the exact textbook CLOCK (one list, one reference bit, second chance): every allocation that
  finds no free frame evicts exactly one page, chosen by the hand (see ``mmnsim.access``). Its fault
  counts equal the textbook algorithm's on any trace. Watermarks and kswapd play no part.

Simplification: one LRU for all nodes, no active/inactive split, no swap cache.
"""

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from mmnsim import HostPolicy, folio_pages, hookimpl, referenced, require, scan_frames, swap_out


class ReclaimMode(StrEnum):
    lru = "lru"
    clock = "clock"


class YoungOp(StrEnum):
    clear_flush_young = "clear_flush_young"
    clear_young = "clear_young"


@dataclass
class SwapConfig:
    mode: ReclaimMode
    young_op: YoungOp  # how reclaim asks secondary MMUs whether a page was used
    batch: int  # fewest candidates examined per round of the lru mode
    passes: float  # how many sweeps over memory one reclaim call may make before giving up

    def __post_init__(self) -> None:
        require(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        require(self.passes > 0, f"passes must be > 0, got {self.passes}")


class Swap(HostPolicy):
    name = "swap"
    Config = SwapConfig

    def __init__(self, sim, cfg: SwapConfig):
        super().__init__(sim, cfg)
        self.hand = 0
        if cfg.mode is ReclaimMode.clock:
            sim.use_exact_clock()

    @hookimpl
    def reclaim(self, sim, nr_pages: int, direct: bool) -> int | None:
        if self.cfg.mode is ReclaimMode.clock:
            return None
        costs = sim.costs
        limit = int(self.cfg.passes * sim.host.nframes)
        freed = scanned = 0
        while freed < nr_pages and scanned < limit:
            # Look at a few candidates per page still wanted: most of a hot set turns out young.
            want = min(max(self.cfg.batch, 4 * (nr_pages - freed)), limit - scanned)
            frames, self.hand, looked = scan_frames(sim, self.hand, want, limit - scanned)
            scanned += looked
            if frames.size == 0:
                break
            young = referenced(sim, frames, self.cfg.young_op.value)
            old = frames[~young]
            # Enough old folios for the pages still wanted (a THP is 512 of them: shrink_folio_list counts pages).
            sizes = folio_pages(sim, old)
            old = old[: int(np.searchsorted(np.cumsum(sizes), nr_pages - freed)) + 1]
            got = swap_out(sim, old)
            freed += got
            sim.charge(looked * costs.reclaim_scan_ns + got * costs.swap_out_ns)
            if got < old.size and sim.host.swap_used() == sim.host.sw.key.size:
                break  # swap is full
        return freed


@hookimpl
def register_components():
    return [Swap]
