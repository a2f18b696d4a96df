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
from .arguments import OperationError, count_arg, frames_arg, page_arg
from .frames import is_device_frame
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
    ft = sim.host._ft
    hand = page_arg(hand, ft.key.size, "scan_frames", "hand")  # the kernel starts at it unchecked
    want = min(count_arg(want, "scan_frames", "want"), ft.key.size)
    limit = min(count_arg(limit, "scan_frames", "limit"), ft.key.size)  # a batch never holds a frame twice
    out = np.empty(want, dtype=np.int64)
    found, hand, scanned = _scan(ft.key, ft.pin, ft.pb, ft.node_order, sim.host._ctr, hand, want, limit, out)
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
        raise OperationError(f"referenced: unknown young op {op!r}; accepted: {', '.join(YOUNG_OPS)}")
    host = sim.host
    frames = frames_arg(sim, frames, "referenced")
    keys = np.empty(frames.size, dtype=np.int64)
    young = np.empty(frames.size, dtype=bool)
    _test_clear_young(host._ft.key, host._pt.flags, frames, keys, young)
    for mm, sel, pages in _by_mm(sim, keys):
        if mm.chain:
            young[sel] |= mm.chain.young(op, pages, pages + 1)
    return young


def swap_out(sim: "Simulation", frames: np.ndarray) -> int:
    """Unmap ``frames`` from every secondary and the primary table, write them to swap, free them.

    Pinned, free, shared or device-private frames are skipped (device memory is on no LRU). Returns the
    number of pages swapped out.
    """
    host = sim.host
    frames = frames_arg(sim, frames, "swap_out")
    if host.device_nodes:
        frames = frames[host.nodes_of(frames) < host.nodes]
    keys = host._ft.key[frames].astype(np.int64)
    done = 0
    for mm, sel, pages in _by_mm(sim, keys):
        split(sim, mm, pages)  # reclaim handles 4 KiB pages: split any THP first
        mine = frames[sel]
        if not mm.chain:
            done += swap_out_frames(host._pt, host._ft, host._sw, host._ctr, mine)
            continue
        count = 0

        def write_out(mine=mine) -> None:
            nonlocal count
            count = swap_out_frames(host._pt, host._ft, host._sw, host._ctr, mine)

        mm._invalidate_pages(pages, Event.CLEAR, write_out)  # start/end per page, or 2.6.27's invalidate_page
        done += count
    return done


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
