"""Reclaim building blocks for host policies, after mm/vmscan.c and mm/rmap.c.

* ``scan_frames``: walk frames from a hand, collecting reclaim candidates (the LRU scan).
* ``referenced``: were they used since last asked? The primary PTE's young bit, and every subscribed
  secondary MMU's answer through ``clear_flush_young`` or ``clear_young`` (folio_referenced).
* ``swap_out``: invalidate the secondaries (one range per page, event CLEAR, as try_to_unmap does per
  folio; under ``kernel=2008`` the ``invalidate_page`` op per page, as until 4.13), write the pages to swap
  and free their frames (shrink_folio_list + pageout).

A policy combines them; the built-in ``swap`` policy is one such combination.
"""

from typing import TYPE_CHECKING

import numpy as np

from . import counters as C
from .fastpath import INVALIDATE_OPS, swap_out_pages, young_frames
from .frames import is_device_frame
from .invariants import report_young
from .kernel import AHEAD, U, kernel, prefetch
from .notifier import Event
from .pagebits import P_YOUNG
from .swapdev import swap_out_frames
from .thp import split

if TYPE_CHECKING:
    from .simulation import Simulation

YOUNG_OPS = ("clear_flush_young", "clear_young")


@kernel
def _scan(fkey, fpin, pb, node_order, ctr, hand, want, limit, out):
    n = fkey.size
    found = 0
    scanned = 0
    while found < want and scanned < limit:
        f = hand
        hand = hand + 1 if hand + 1 < n else 0
        scanned += 1
        if fkey[f] < 0 or is_device_frame(pb, node_order, f):  # free, orphaned, or not on any LRU
            continue
        if fpin[f] > 0:
            ctr[C.PIN_SKIPPED] += 1
            continue
        out[found] = f
        found += 1
    ctr[C.PGSCAN] += scanned
    return found, hand, scanned


def scan_frames(sim: "Simulation", hand: int, want: int, limit: int) -> tuple[np.ndarray, int, int]:
    """Up to ``want`` in-use, unpinned frames from ``hand`` on, looking at no more than ``limit`` frames.

    Returns the frames, the new hand position and the number of frames looked at.
    """
    out = np.empty(want, dtype=np.int64)
    ft = sim.host._ft
    limit = min(limit, ft.key.size)  # one batch never holds a frame twice (its young answer would change)
    found, hand, scanned = _scan(ft.key, ft.pin, ft.pb, ft.node_order, sim.host.ctr, hand, want, limit, out)
    return out[:found], int(hand), int(scanned)


@kernel
def _test_clear_young(fkey, pflags, frames, keys, young):
    for i in range(frames.size):
        if i + AHEAD < frames.size and fkey[frames[i + AHEAD]] >= 0:  # frames in order, their pages at random
            prefetch(pflags, U(fkey[frames[i + AHEAD]]))
        k = fkey[frames[i]]
        keys[i] = k
        young[i] = k >= 0 and (pflags[k] & P_YOUNG) != 0
        if k >= 0:
            pflags[k] &= ~P_YOUNG


def referenced(sim: "Simulation", frames: np.ndarray, op: str = "clear_flush_young") -> np.ndarray:
    """For each frame: accessed since last asked, by the CPU or by any subscribed secondary MMU?

    Clears what it reads (test-and-clear), as folio_referenced does.
    """
    if op not in YOUNG_OPS:
        raise ValueError(f"unknown young op {op!r}; accepted: {', '.join(YOUNG_OPS)}")
    host = sim.host
    young = np.empty(frames.size, dtype=bool)
    table = sim.fast.young_table(op)
    if table is not None:  # every subscriber's young op is the standard one: one compiled pass
        _young_fast(sim, frames, op, table, young)
        return young
    keys = np.empty(frames.size, dtype=np.int64)
    _test_clear_young(host._ft.key, host._pt.flags, frames, keys, young)
    for mm, sel, pages in _by_mm(sim, keys):
        if mm.chain:
            young[sel] |= mm.chain.young(op, pages, pages + 1)
    return young


def swap_out(sim: "Simulation", frames: np.ndarray) -> int:
    """Unmap ``frames`` from every secondary and the primary table, write them to swap, free them.

    Pinned or free frames are skipped. Returns the number of pages swapped out.
    """
    host = sim.host
    keys = host._ft.key[frames].astype(np.int64)
    done = 0
    for mm, sel, pages in _by_mm(sim, keys):
        split(sim, mm, pages)  # reclaim handles 4 KiB pages: split any THP first
        mine = frames[sel]
        subs = None if sim.kernel.invalidate_page else sim.fast.subscribers(mm, INVALIDATE_OPS)
        if subs is not None and subs.size:  # every subscriber's invalidation is the standard one: compiled
            done += _swap_out_fast(sim, mm, mine, pages, subs)
            continue
        if not mm.chain:  # nobody to tell: the pages still record who reclaimed them
            done += swap_out_frames(host._pt, host._ft, host._sw, host.ctr, mine)
            sim.actors.record(mm.base, pages, pages + 1, f"CLEAR of mm '{mm.name}'", sim.tick)
            continue
        count = 0

        def write_out(mine=mine) -> None:
            nonlocal count
            count = swap_out_frames(host._pt, host._ft, host._sw, host.ctr, mine)

        mm.invalidate_pages(pages, Event.CLEAR, write_out)  # start/end per page, or 2.6.27's invalidate_page
        done += count
    return done


def _young_fast(sim: "Simulation", frames: np.ndarray, op: str, table: np.ndarray, young: np.ndarray) -> None:
    host, tables = sim.host, sim.secondary_tables
    nsec = max(len(sim.secondaries), 1)
    wrong = np.zeros((nsec, 2), dtype=np.int64)
    first = np.zeros((nsec, 2), dtype=np.int64)
    young_frames(np.ascontiguousarray(frames, dtype=np.int64), young, host._ft.key, host._pt.flags, host._pt.mm_base,
                 table, tables.offset, tables.sflags, tables.shadow, tables.acc, op == "clear_flush_young", wrong,
                 first)  # fmt: skip
    for j in np.unique(table[table >= 0]).tolist():
        sec = sim.secondaries[j]
        sec._settle_aging()
        if wrong[j].any() and sim.engine.check_invariants:
            report_young(sim, sec, op, int(wrong[j, 0]), int(first[j, 0]), int(wrong[j, 1]), int(first[j, 1]), 0, 0)


def _swap_out_fast(sim: "Simulation", mm, frames: np.ndarray, pages: np.ndarray, subs: np.ndarray) -> int:
    host, tables = sim.host, sim.secondary_tables
    pt, ft, sw = host._pt, host._ft, host._sw
    event = sim.actors.event(f"CLEAR of mm '{mm.name}'", sim.tick)
    count = swap_out_pages(np.ascontiguousarray(frames, dtype=np.int64), pages, mm.base, subs, tables.offset,
                           tables.spte, tables.sflags, tables.shadow, tables.state, tables.acc, pt.pte, pt.flags,
                           ft.key, ft.token, ft.pin, ft.node, ft.lists, ft.pb, ft.bits, sw.key, sw.token, sw.free,
                           sw.reg, host.ctr, sim.actors.changed, event)  # fmt: skip
    mm.chain.invalidate_seq += 2  # the start and the end of the invalidation
    for j in subs.tolist():
        sim.secondaries[j]._settle_invalidation()
    return count


def _by_mm(sim: "Simulation", keys: np.ndarray):
    """Split global page keys by owning mm: yields (mm, selector into keys, page numbers in the mm)."""
    if keys.size == 0:
        return
    if len(sim.mms) == 1 and keys.min() >= 0:
        yield sim.mms[0], slice(None), keys - sim.mms[0].base
        return
    valid = keys >= 0
    owners = np.searchsorted(sim.host._pt.mm_base, keys, side="right") - 1
    owners[~valid] = -1
    for index in np.unique(owners[valid]):
        sel = owners == index
        mm = sim.mms[index]
        yield mm, sel, keys[sel] - mm.base
