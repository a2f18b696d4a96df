"""What a reclaim policy reads of one mm: its folios in the order reclaim's scan meets them, and its counters.

* ``lru_folios``: an mm's reclaim candidates (resident, in RAM, not shared, not pinned; a THP as one folio)
  in the order ``scan_frames`` visits frames, from a hand: the mm's own LRU as the framework's reclaim sees
  it (a CLOCK over frames; the two lists of ``mmnsim.lru`` keep the same frame order). A policy that reclaims
  one tenant at a time, as ``memory.reclaim`` reclaims one cgroup (mm/memcontrol.c memory_reclaim ->
  try_to_free_mem_cgroup_pages), walks these.
* ``MMCounters`` (``mm.counters()``): its resident, swapped and pinned pages, and the faults its accesses
  took, refaults among them.

A refault, in the kernel, is a fault on a page whose eviction left a shadow entry: on the anonymous side a
swap-in that finds the shadow reclaim left in the swap cache (mm/swap_state.c __read_swap_cache_async, or
do_swap_page's synchronous path, calling mm/workingset.c workingset_refault, which counts
WORKINGSET_REFAULT_ANON; since 5.9, commit aae466b0052e). The model has no swap cache and never drops a
shadow, and every swap entry is a page reclaim evicted, so each major fault (a swap-in) is a refault.

Each mm's faults are counted at no cost per access: a batch of accesses belongs to one mm, so the faults
the access kernel added to the global counters during a batch are that mm's (``FaultCounts``).
"""

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import counters as C
from .arguments import int_scalar, mm_arg
from .frames import PAGEBLOCK_SHIFT, PB_NODE
from .kernel import count_at_most
from .pagebits import HUGE_PAGES, P_HUGE

if TYPE_CHECKING:
    from .mm import MM
    from .simulation import Simulation

FAULTS = np.array([C.MINOR_FAULTS, C.MAJOR_FAULTS])  # the global counters attributed to mms


class Folios(NamedTuple):
    """An mm's reclaim candidates, one per folio, in the scan's order: new arrays, the caller's own."""

    frames: np.ndarray  # int64: the folio's frame (a THP's first), what ``referenced`` and ``swap_out`` take
    pages: np.ndarray  # int64: its first page in the mm
    npages: np.ndarray  # int64: its pages, 512 for a THP (``folio_pages``), else 1


class MMCounters(NamedTuple):
    """One mm's memory and faults (``mm.counters()``): a snapshot, taken when asked."""

    resident: int  # pages mapped to a frame (RAM or device memory)
    swapped: int  # pages in swap (a swap entry in the PTE)
    pinned: int  # resident pages whose frame a long-term pin holds: reclaim and migration leave them
    minor_faults: int  # faults of its accesses that needed no I/O (first touch, zero-filled)
    refaults: int  # faults of its accesses that read a page back from swap: major faults, each a refault


def lru_folios(sim: "Simulation", mm: "MM", hand: int = 0) -> Folios:
    """The folios of ``mm`` that reclaim can take, in the order ``scan_frames`` meets them from frame ``hand`` on.

    The same candidates as ``scan_frames`` finds, restricted to ``mm``: frames that hold one page of ``mm`` (not
    free, not a shared KSM frame), in RAM (device memory is on no LRU), not pinned (a THP is pinned if any of its
    frames is: folio_maybe_dma_pinned), a THP once, as its first frame. Ordered by frame number from ``hand``,
    wrapping round, as the scan's hand moves. Nothing is cleared or charged; the arrays are copies, the caller's
    to keep or change. Pass them to ``referenced`` and ``swap_out``; ``pages`` index per-page state of the mm.
    """
    mm = mm_arg(sim, mm, "lru_folios")
    hand = int_scalar(hand, "lru_folios", "hand")  # any integer: the frames from it on, wrapping round
    host = sim.host
    ft = host.ft
    pte = mm.pte
    pages = np.flatnonzero(pte >= 0)
    frames = pte[pages].astype(np.int64)
    keep = ft.key[frames] == mm.base + pages  # names its one page: not shared, not an orphan
    keep &= ft.pb[frames >> PAGEBLOCK_SHIFT, PB_NODE] < ft.node_order.shape[0]  # in RAM, not device-private memory
    huge = (mm.flags[pages] & P_HUGE) != 0
    keep &= ~huge | ((frames & (HUGE_PAGES - 1)) == 0)  # a THP once, by its first frame
    pinned_blocks = np.unique(np.flatnonzero(ft.pin) >> PAGEBLOCK_SHIFT)
    pinned = np.where(huge, np.isin(frames >> PAGEBLOCK_SHIFT, pinned_blocks), ft.pin[frames] > 0)
    keep &= ~pinned
    frames, pages, huge = frames[keep], pages[keep], huge[keep]
    order = np.argsort(frames, kind="stable")
    order = np.roll(order, -int(np.searchsorted(frames[order], hand)))
    return Folios(frames[order], pages[order], np.where(huge[order], HUGE_PAGES, 1).astype(np.int64))


def mm_counters(sim: "Simulation", mm: "MM") -> MMCounters:
    """``mm``'s counters now (see ``MMCounters``); ``mm.counters()`` calls it."""
    pte = mm.pte
    present = pte[pte >= 0]
    minor, major = (int(v) for v in sim._mm_faults.per_mm[mm.index])
    return MMCounters(resident=int(present.size), swapped=int(count_at_most(pte, -2)),
                      pinned=int(np.count_nonzero(sim.host.ft.pin[present])), minor_faults=minor,
                      refaults=major)  # fmt: skip


class FaultCounts:
    """Each mm's faults (minor, major), from the access kernel's global counters: the faults a batch of
    accesses adds are its mm's, less those of any batch run inside it (a ``populate`` in a fault-around, a
    ``swap_in`` in reclaim), which are counted for their own mm. No cost per access: a few numpy operations
    per batch. The framework's, not for plugins (they read ``mm.counters()``)."""

    def __init__(self, mms: int):
        self.per_mm = np.zeros((mms, FAULTS.size), dtype=np.int64)
        self._counted = np.zeros(FAULTS.size, dtype=np.int64)  # faults attributed to some mm so far

    def mark(self, ctr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Before a batch: the global counters and what was attributed so far."""
        return ctr[FAULTS], self._counted.copy()

    def settle(self, mm_index: int, ctr: np.ndarray, mark: tuple[np.ndarray, np.ndarray]) -> None:
        """After the batch of mm ``mm_index`` that ``mark`` began: its own faults are its mm's."""
        before, counted = mark
        own = (ctr[FAULTS] - before) - (self._counted - counted)  # less what batches run inside it counted
        self.per_mm[mm_index] += own
        self._counted += own
