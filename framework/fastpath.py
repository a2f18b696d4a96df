"""Reclaim's notifier calls, compiled, for subscribers whose plugin declares a fast path.

Reclaim asks every subscriber of a page's mm whether the page was young (``referenced``) and invalidates
each page it swaps out (``swap_out``; ``mmnsim.reclaim``): one-page ranges, hundreds per batch, a batch
every few thousand accesses. Through the notifier chain each batch is a pluggy call per subscriber with a
dozen numpy calls around it. Here it is one compiled kernel per batch doing what the subscribers' hooks
would do, under the contract a plugin states by naming the hooks in ``SecondaryMMU.fast_ops``:

* ``invalidate_range_start(ranges)`` is ``begin_invalidate(ranges)`` then ``zap(ranges.start, ranges.end)``;
* ``invalidate_range_end(ranges)`` is ``end_invalidate()``;
* ``clear_flush_young`` and ``clear_young`` return ``harvest_accessed(start, end, clear=True)``;

with the plugin's costs and metrics computed, afterwards, from the counts the kernel leaves in
``SecondaryTables.acc`` (pages zapped, ranges that zapped, pages aged, ranges found young):
``SecondaryMMU.fast_account``. The framework takes the fast path only for an object of exactly the class
that declares it (a subclass may change any method, so it goes through the chain), and only when every
subscriber of the mm has one; otherwise the chain delivers as always. The checks stay: a young op's answer
is judged against the framework's shadow as ``NotifierChain.young`` judges it, and an invalidation's
postcondition holds by construction (the framework zaps). ``tests/test_fastpath.py`` runs scenarios both
ways and compares every metric.
"""

from typing import TYPE_CHECKING

import numpy as np

from . import counters as C
from .kernel import AHEAD, U, kernel, prefetch
from .notifier import Event
from .pagebits import HUGE_PAGES, P_HUGE, P_YOUNG, S_ACCESSED, SH_ACCESSED
from .secondary import IN_PROGRESS, INV_HI, INV_LO, SEQ, zap_range
from .sectables import ACC_AGED, ACC_FLUSH_YOUNG, ACC_YOUNG, ACC_ZAP_RANGES, ACC_ZAPPED
from .swapdev import SWAP_FULL, SWAPPED, swap_out_frame

if TYPE_CHECKING:
    from .mm import MM
    from .simulation import Simulation

INVALIDATE_OPS = ("invalidate_range_start", "invalidate_range_end")
_CLEAR = int(Event.CLEAR)


class FastRoutes:
    """Which subscribers the compiled path serves, per mm and per group of ops: the secondary-table indices of
    an mm's subscribers when every one of them declares the ops (kept until a chain changes)."""

    def __init__(self, sim: "Simulation"):
        self.sim = sim
        self.enabled = True  # False: every call goes through the chain (tests compare the two)
        self._tables: dict[str, np.ndarray | None] = {}

    def changed(self) -> None:
        """A chain gained or lost a subscriber."""
        self._tables.clear()

    def subscribers(self, mm: "MM", ops: tuple[str, ...]) -> np.ndarray | None:
        """The indices of ``mm``'s subscribers if the compiled path can serve ``ops`` for every one of them (an
        empty array if none is subscribed), else None."""
        subs = mm.chain.subscribers()
        if not self.enabled or not all(getattr(s, "serves_fast", _never)(ops) for s in subs):
            return None
        return np.array(sorted(s.index for s in subs), dtype=np.int64)

    def young_table(self, op: str) -> np.ndarray | None:
        """[mm, k]: the k-th subscriber of each mm (-1 pads) for young op ``op``, or None if some mm has a
        subscriber the compiled path cannot serve."""
        if not self.enabled:
            return None
        if op in self._tables:
            return self._tables[op]
        rows = [self.subscribers(mm, (op,)) for mm in self.sim.mms]
        table = None
        if all(r is not None for r in rows):
            table = np.full((len(rows), max([1, *(r.size for r in rows)])), -1, dtype=np.int64)
            for i, r in enumerate(rows):
                table[i, : r.size] = r
        self._tables[op] = table
        return table


def _never(ops: tuple[str, ...]) -> bool:
    return False


@kernel
def young_frames(frames, young, fkey, pflags, mm_base, subs, offset, sflags, shadow, acc, flush, wrong, first):
    """``referenced`` over ``frames``: each folio's PTE young bit, test-and-cleared (folio_referenced), ORed with
    every fast subscriber's answer for the folio (its entries' S_ACCESSED, test-and-cleared), which is judged
    against the framework's shadow (consumed), as ``NotifierChain.young`` judges it: ``wrong[j, 0]`` counts the
    folios subscriber ``j`` called young that nothing accessed, ``wrong[j, 1]`` (``clear_flush_young`` only:
    ``clear_young`` may err toward old) those it called old that were accessed; ``first[j]`` holds the first
    page of each. A THP is one folio, one range of 512 pages (a frame of the THP just answered shares its
    answer). ``flush``: the op is ``clear_flush_young``."""
    last = -1
    last_young = False
    for i in range(frames.size):
        if i + AHEAD < frames.size and fkey[frames[i + AHEAD]] >= 0:  # frames in order, their pages at random:
            ahead = fkey[frames[i + AHEAD]]  # the PTE and the first subscriber's entry of the page AHEAD on
            prefetch(pflags, U(ahead))
            m = np.searchsorted(mm_base, ahead, side="right") - 1
            if subs[m, 0] >= 0:
                prefetch(sflags, U(offset[subs[m, 0]] + ahead - mm_base[m]))
                prefetch(shadow, U(offset[subs[m, 0]] + ahead - mm_base[m]))
        k = fkey[frames[i]]
        if k < 0:
            young[i] = False
            continue
        lo, n = k, 1
        if pflags[k] & P_HUGE:  # a THP: one folio, one accessed bit for its 2 MiB
            lo, n = k - (frames[i] & (HUGE_PAGES - 1)), HUGE_PAGES
            if lo == last:
                young[i] = last_young
                continue
            last = lo
        y = False
        for key in range(lo, lo + n):
            y |= (pflags[key] & P_YOUNG) != 0
            pflags[key] &= ~P_YOUNG
        m = np.searchsorted(mm_base, k, side="right") - 1
        p = lo - mm_base[m]
        for s in range(subs.shape[1]):
            j = subs[m, s]
            if j < 0:
                break
            truth = answer = False
            for q in range(offset[j] + p, offset[j] + p + n):
                truth |= (shadow[q] & SH_ACCESSED) != 0
                shadow[q] &= ~SH_ACCESSED
                answer |= (sflags[q] & S_ACCESSED) != 0
                sflags[q] &= ~S_ACCESSED
            acc[j, ACC_AGED] += n
            if answer:
                acc[j, ACC_YOUNG] += 1
                if flush:
                    acc[j, ACC_FLUSH_YOUNG] += 1
            lie = 0 if answer and not truth else 1 if flush and truth and not answer else -1
            if lie >= 0:
                if wrong[j, lie] == 0:
                    first[j, lie] = p
                wrong[j, lie] += 1
            y |= answer
        young[i] = y
        last_young = y


@kernel
def invalidate_start(pages, subs, offset, spte, sflags, shadow, state, acc, fkey, ftoken, fpin, node, lists, pb, bits,
                     ctr):  # fmt: skip
    """invalidate_range_start of one-page ranges (CLEAR), delivered to the fast subscribers ``subs``: each raises
    its in-progress window over the batch's span (kvm_mmu_invalidate_begin, kvm_mmu_invalidate_range_add) and
    zaps every page's entry, counting them in ``acc``. The PTEs change after it, then ``invalidate_end``."""
    n = pages.size
    ctr[C.INVALIDATIONS] += n
    ctr[C.INVALIDATIONS_BY_EVENT + _CLEAR] += n
    if n == 0:
        return
    lo = pages[0]
    hi = pages[0] + 1
    for r in range(n):
        lo = min(lo, pages[r])
        hi = max(hi, pages[r] + 1)
    for s in range(subs.size):
        j = subs[s]
        if state[j, IN_PROGRESS] == 0:
            state[j, INV_LO] = lo
            state[j, INV_HI] = hi
        else:
            state[j, INV_LO] = min(state[j, INV_LO], lo)
            state[j, INV_HI] = max(state[j, INV_HI], hi)
        state[j, IN_PROGRESS] += 1
        o, e = offset[j], offset[j + 1]
        sp, sf, sh = spte[o:e], sflags[o:e], shadow[o:e]
        for r in range(n):
            if r + AHEAD < n:  # reclaim's pages are far apart
                prefetch(sp, U(pages[r + AHEAD]))
                prefetch(sf, U(pages[r + AHEAD]))
                prefetch(sh, U(pages[r + AHEAD]))
            c = zap_range(sp, sf, sh, pages[r], pages[r] + 1, fkey, ftoken, fpin, node, lists, pb, bits, ctr)
            acc[j, ACC_ZAPPED] += c
            acc[j, ACC_ZAP_RANGES] += c > 0


@kernel
def invalidate_end(subs, state):
    """invalidate_range_end to the fast subscribers: kvm_mmu_invalidate_end, the sequence moves (a fault in flight
    retries) and the in-progress window closes."""
    for s in range(subs.size):
        j = subs[s]
        state[j, IN_PROGRESS] -= 1
        state[j, SEQ] += 1


@kernel
def swap_out_pages(frames, pages, base, subs, offset, spte, sflags, shadow, state, acc, pte, pflags, fkey, ftoken,
                   fpin, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr, changed, event):  # fmt: skip
    """``swap_out`` of ``frames`` (mapping ``pages`` of the mm at key ``base``) under one CLEAR invalidation of
    one-page ranges, delivered to the fast subscribers ``subs``; the pages go to swap (until it fills) and
    record ``event`` as the last change. As the chain would, in the order it would: every zap before the first
    PTE changes (a subscriber in notifier mode holds no pins, so zapping frees no frame and the pages' order
    cannot matter). Returns the pages swapped out."""
    if pages.size == 0:
        return 0
    invalidate_start(pages, subs, offset, spte, sflags, shadow, state, acc, fkey, ftoken, fpin, node, lists, pb, bits,
                     ctr)  # fmt: skip
    n = pages.size
    count = 0
    full = False
    for r in range(n):
        if r + AHEAD < n:
            prefetch(pte, U(base + pages[r + AHEAD]))
            prefetch(pflags, U(base + pages[r + AHEAD]))
            prefetch(changed, U(base + pages[r + AHEAD]))
        if not full:
            got = swap_out_frame(pte, pflags, fkey, ftoken, fpin, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr,
                                 frames[r])  # fmt: skip
            full = got == SWAP_FULL
            count += got == SWAPPED
        changed[base + pages[r]] = event
    invalidate_end(subs, state)
    return count
