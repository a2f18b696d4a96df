"""Reclaim building blocks for host policies, after mm/vmscan.c and mm/rmap.c.

* ``scan_frames``: walk frames from a hand, collecting reclaim candidates (the LRU scan).
* ``referenced``: were they used since last asked? The primary PTE's young bit, and every subscribed
  secondary MMU's answer through ``clear_flush_young`` or ``clear_young`` (folio_referenced); or, with
  ``test_young``, the same question without clearing anything (as DAMON's access check asks it).
* ``swap_out``: invalidate the secondaries (one range per page, event CLEAR, as try_to_unmap does per
  folio; under ``kernel=2008`` the ``invalidate_page`` op per page, as until 4.13), write the pages to swap
  and free their frames (shrink_folio_list + pageout).
* ``shrink_batch``: the three in one round, as a one-list policy makes it (scan, age, swap out the old),
  compiled where every subscriber's young op and invalidation are the standard ones.

The unit of all three is the folio: a 4 KiB page, or a transparent huge page as a whole. A THP has one
accessed bit (its PMD's; a 2 MiB secondary entry's one), so it is aged as one 2 MiB range and reclaimed
only when old as a whole: into a free swap cluster whole (THP_SWPOUT), or, when no cluster is free, split
first and its pages swapped out one by one (THP_SWPOUT_FALLBACK). ``folio_pages`` says how many pages a
candidate stands for.

None of them charges time. The secondary MMUs charge their own work inside the notifier calls these raise (KVM
its aging per page, its zaps and TLB flushes); reclaim's own CPU work (the scan, the rmap walk, the write to swap)
is the policy's to charge, with ``charge_reclaim``. A refault's swap-in is charged by the framework to the
client that faults.

A policy combines them; the built-in ``swap`` policy is one such combination.
"""

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from . import counters as C
from .arguments import OperationError, count_arg, frames_arg, page_arg
from .fastpath import INVALIDATE_OPS, swap_out_pages, young_frames
from .frames import LRU_ACTIVE, PAGEBLOCK_SHIFT, is_device_frame
from .host import SwapDevice
from .invariants import report_young
from .kernel import AHEAD, U, kernel, prefetch
from .notifier import Event, NotifierRange, expand_ranges, sum_per_range
from .pagebits import HUGE_PAGES, P_HUGE, P_YOUNG, clear_mask
from .swapdev import SWAPPED, swap_alloc_cluster, swap_out_frames, swap_out_thp
from .thp import split

if TYPE_CHECKING:
    from .simulation import Simulation

YOUNG_OPS = ("clear_flush_young", "clear_young", "test_young")


@kernel(inline=True)
def _met(f, pinned, lru, fref, ctr, out, found):
    """A folio the scan met (a THP as its first frame): a pinned one stays mapped (folio_maybe_dma_pinned), and on
    the inactive list shrink_folio_list activates it (activate_locked); any other is found. Returns the count
    found."""
    if pinned and lru != 1:
        ctr[C.PIN_SKIPPED] += 1
        if lru == 0:
            fref[f] |= LRU_ACTIVE
        return found
    out[found] = f
    return found + 1


@kernel
def _scan(fkey, fpin, pb, node_order, pflags, fref, lru, ctr, hand, want, limit, out):
    """The LRU scan: the next in-use, unpinned folios from ``hand``. A THP (a pageblock mapping one aligned
    2 MiB region, in order) is one folio of 512 pages: its first frame stands for it, its pages count as
    scanned (nr_scanned += folio_nr_pages), its other frames are passed over.

    ``lru`` -1: every folio (one list, every frame passed counts as scanned); 0 or 1: only the inactive or the
    active list's folios (``fref``'s LRU_ACTIVE; ``mmnsim.lru``), the others passed over unscanned, as they
    are on another list: the pages of that list's folios met count, pinned ones too (isolate_lru_folios'
    nr_scanned). A pinned folio met on the inactive list is activated: shrink_folio_list's try_to_unmap
    fails on it (mm/rmap.c try_to_unmap_one: folio_try_share_anon_rmap_pte refuses a folio that may be
    DMA-pinned) and the folio goes to activate_locked; on the active list it is deactivated as any other
    (shrink_active_list does not look at pins), so it is returned with the others. Returns the folios found,
    the new hand, the frames passed and the pages scanned. On a list, ``want`` bounds the folios met, pinned
    ones included (isolate_lru_folios takes nr_to_scan folios, SWAP_CLUSTER_MAX, whatever shrink_folio_list
    will do with them); on the one list, the folios found."""
    n = fkey.size
    found = 0
    scanned = 0
    taken = 0
    thp_block = -1  # the pageblock last found to hold a THP
    checked_block = -1
    while (found if lru < 0 else taken) < want and scanned < limit:  # a list's batch: want folios met
        f = hand
        b = f >> PAGEBLOCK_SHIFT
        if b != checked_block:  # one look per pageblock at its first page: is it a THP?
            checked_block = b
            head = fkey[b << PAGEBLOCK_SHIFT]
            thp_block = b if head >= 0 and pflags[head] & P_HUGE else -1
        if b == thp_block:
            end = min((b + 1) << PAGEBLOCK_SHIFT, n)
            scanned += end - f
            hand = end if end < n else 0
            if f == b << PAGEBLOCK_SHIFT and (lru < 0 or ((fref[f] & LRU_ACTIVE) != 0) == (lru == 1)):
                taken += end - f
                pinned = False
                for g in range(f, end):
                    pinned |= fpin[g] > 0
                found = _met(f, pinned, lru, fref, ctr, out, found)
            continue
        hand = hand + 1 if hand + 1 < n else 0
        scanned += 1
        if fkey[f] < 0 or is_device_frame(pb, node_order, f):  # free, orphaned, or not on any LRU
            continue
        if lru >= 0 and ((fref[f] & LRU_ACTIVE) != 0) != (lru == 1):  # on the other list
            continue
        taken += 1
        found = _met(f, fpin[f] > 0, lru, fref, ctr, out, found)
    ctr[C.PGSCAN] += scanned if lru < 0 else taken
    return found, hand, scanned, taken


@kernel
def _scan_age_select(fkey, fpin, pb, node_order, pflags, fref, ctr, hand, want, limit, frames, young, mm_base, table,
                     offset, sflags, shadow, acc, flush, wrong, first, wanted, base, old, pages, out):  # fmt: skip
    """``shrink_batch``'s compiled part, for one mm at key ``base``: the scan (one list), the young op over the
    folios found (``young_frames``), and the old ones in order into ``old`` (their pages in ``pages``) until
    ``wanted`` pages. ``out``: folios found, the new hand, frames passed, old folios taken; -1 taken if an old
    THP comes first (its 512 pages are the caller's to count: ``folio_pages``)."""
    found, hand, scanned, _ = _scan(fkey, fpin, pb, node_order, pflags, fref, -1, ctr, hand, want, limit, frames)
    out[0], out[1], out[2] = found, hand, scanned
    young_frames(frames[:found], young[:found], fkey, pflags, mm_base, table, offset, sflags, shadow, acc, flush,
                 wrong, first)  # fmt: skip
    taken = 0
    for i in range(found):
        if taken >= wanted:
            break
        if young[i]:
            continue
        k = fkey[frames[i]]
        if pflags[k] & P_HUGE:
            out[3] = -1
            return
        old[taken] = frames[i]
        pages[taken] = k - base
        taken += 1
    out[3] = taken


def scan_frames(sim: "Simulation", hand: int, want: int, limit: int) -> tuple[np.ndarray, int, int]:
    """Up to ``want`` reclaim candidates (folios) from ``hand`` on, looking at no more than ``limit`` frames: in-use,
    unpinned frames, a THP as its first frame (``folio_pages`` says how many pages each stands for).

    Returns the frames, the new hand position and the number of frames looked at.
    """
    ft = sim.host._ft
    hand = page_arg(hand, ft.key.size, "scan_frames", "hand")  # the kernel starts at it unchecked
    want = min(count_arg(want, "scan_frames", "want"), ft.key.size)
    limit = min(count_arg(limit, "scan_frames", "limit"), ft.key.size)  # a batch never holds a frame twice
    out = np.empty(want, dtype=np.int64)
    found, hand, scanned, _ = _scan(ft.key, ft.pin, ft.pb, ft.node_order, sim.host._pt.flags, ft.ref, -1,
                                    sim.host._ctr, hand, want, limit, out)  # fmt: skip
    return out[:found], int(hand), int(scanned)


def folio_pages(sim: "Simulation", frames: np.ndarray) -> np.ndarray:
    """How many pages the folio each frame belongs to holds: 512 for a THP's, 1 for a 4 KiB page's (and for a
    free frame). What a policy reclaiming ``nr_pages`` counts its candidates in."""
    frames = frames_arg(sim, frames, "folio_pages")
    pages = np.ones(frames.size, dtype=np.int64)
    keys = sim.host._ft.key[frames]
    inuse = keys >= 0
    pages[inuse] = np.where(sim.host._pt.flags[keys[inuse]] & P_HUGE, HUGE_PAGES, 1)
    return pages


class Batch(NamedTuple):
    """What one ``shrink_batch`` round did."""

    freed: int  # pages swapped out
    offered: int  # old folios handed to swap_out
    found: int  # folios the scan found
    hand: int  # where the next scan starts
    looked: int  # frames the scan passed


def shrink_batch(sim: "Simulation", hand: int, want: int, limit: int, nr_pages: int,
                 op: str = "clear_flush_young") -> Batch:  # fmt: skip
    """One round of reclaim as a one-list policy makes it: ``scan_frames(hand, want, limit)``, ``referenced``
    of the folios found (``op``), and ``swap_out`` of the old ones, in the order found, until their pages reach
    ``nr_pages`` (``folio_pages``: a THP counts 512; the last folio whole; at least one). Exactly those calls,
    in that order, with the same effects; where every subscriber's young op and invalidation are the standard
    ones (``fast_ops``), one mm and no device memory, the scan, the young op and the choice are one compiled
    call and the swap-out another. Charges nothing (``charge_reclaim`` is the policy's)."""
    hand = page_arg(hand, sim.host._ft.key.size, "shrink_batch", "hand")
    want = count_arg(want, "shrink_batch", "want")
    limit = count_arg(limit, "shrink_batch", "limit")
    nr_pages = count_arg(nr_pages, "shrink_batch", "nr_pages")
    if op not in YOUNG_OPS:
        raise OperationError(f"shrink_batch: unknown young op {op!r}; accepted: {', '.join(YOUNG_OPS)}")
    wanted = max(nr_pages, 1)  # at least one folio, as the calls take one
    host = sim.host
    mm = sim.mms[0] if len(sim.mms) == 1 else None
    table = sim.fast.young_table(op) if op != "test_young" and mm is not None else None
    subs = None if sim.kernel.invalidate_page or table is None else sim.fast.subscribers(mm, INVALIDATE_OPS)
    if subs is None or not subs.size or host.device_nodes:  # the calls themselves
        frames, hand, looked = scan_frames(sim, hand, want, limit)
        if frames.size == 0:
            return Batch(0, 0, 0, hand, looked)
        young = referenced(sim, frames, op)
        return Batch(*_swap_out_old(sim, frames, young, wanted), frames.size, hand, looked)
    ft, want, limit = host._ft, min(want, host._ft.key.size), min(limit, host._ft.key.size)
    frames, young = np.empty(want, dtype=np.int64), np.empty(want, dtype=bool)
    old, pages = np.empty(min(want, wanted), dtype=np.int64), np.empty(min(want, wanted), dtype=np.int64)
    nsec = max(len(sim.secondaries), 1)
    wrong, first, out = np.zeros((nsec, 2), dtype=np.int64), np.zeros((nsec, 2), dtype=np.int64), np.zeros(4, np.int64)
    tables = sim._secondary_tables
    _scan_age_select(ft.key, ft.pin, ft.pb, ft.node_order, host._pt.flags, ft.ref, host._ctr, hand, want, limit,
                     frames, young, host._pt.mm_base, table, tables.offset, tables.sflags, tables.shadow, tables.acc,
                     op == "clear_flush_young", wrong, first, wanted, mm.base, old, pages, out)  # fmt: skip
    found, hand, looked, taken = (int(x) for x in out)
    if found == 0:
        return Batch(0, 0, 0, hand, looked)
    _settle_young(sim, op, table, wrong, first)
    if taken < 0:  # an old THP: counted and swapped out as the calls do it
        return Batch(*_swap_out_old(sim, frames[:found], young[:found], wanted), found, hand, looked)
    freed = _swap_out_fast(sim, mm, old[:taken], pages[:taken], subs) if taken else 0
    return Batch(freed, taken, found, hand, looked)


def _swap_out_old(sim: "Simulation", frames: np.ndarray, young: np.ndarray, nr_pages: int) -> tuple[int, int]:
    """``swap_out`` of the old ``frames`` in order until their pages reach ``nr_pages``: (freed, offered)."""
    old = frames[~young]
    old = old[: int(np.searchsorted(np.cumsum(folio_pages(sim, old)), nr_pages)) + 1]
    return swap_out(sim, old), old.size


@kernel
def _test_clear_young(fkey, pflags, frames, keys, lens, young):
    """folio_referenced's own part: each frame's folio, its first page key and length (0: the same THP as the
    frame before, answered once), and its PTE accessed bit, test-and-cleared (a THP's PMD bit: any of its
    pages' bits, all cleared)."""
    last = -1
    for i in range(frames.size):
        if i + AHEAD < frames.size and fkey[frames[i + AHEAD]] >= 0:  # frames in order, their pages at random
            prefetch(pflags, U(fkey[frames[i + AHEAD]]))
        k = fkey[frames[i]]
        keys[i] = k
        lens[i] = 1
        young[i] = False
        if k < 0:
            continue
        if pflags[k] & P_HUGE:
            first = k - (frames[i] & (HUGE_PAGES - 1))
            keys[i] = first
            if first == last:
                lens[i] = 0
                continue
            last = first
            lens[i] = HUGE_PAGES
            y = False
            for j in range(first, first + HUGE_PAGES):
                y |= (pflags[j] & P_YOUNG) != 0
                pflags[j] &= ~P_YOUNG
            young[i] = y
            continue
        young[i] = (pflags[k] & P_YOUNG) != 0
        pflags[k] &= ~P_YOUNG


def referenced(sim: "Simulation", frames: np.ndarray, op: str = "clear_flush_young") -> np.ndarray:
    """For each frame: accessed since last asked, by the CPU or by any subscribed secondary MMU?

    Clears what it reads (test-and-clear), as folio_referenced does, per folio: a THP has one accessed bit
    (its PMD's, and one per huge secondary entry: pmdp_clear_flush_young_notify asks the young op over its
    2 MiB), so a frame of a THP answers for the whole THP, once (frames of one THP, in order, share the answer).

    ``op="test_young"`` looks without clearing, as DAMON's access check looks (mm/damon/vaddr.c
    damon_young_pmd_entry: pte_young, or mmu_notifier_test_young): the PTE's young bit (a THP's: any of its
    pages') or any subscriber's ``test_young``. The bits stay as they were, so reclaim's next answer is the
    same as if nobody had looked: "used since reclaim (or a clearing ``referenced``) last asked". A free frame
    answers False.
    """
    if op not in YOUNG_OPS:
        raise OperationError(f"referenced: unknown young op {op!r}; accepted: {', '.join(YOUNG_OPS)}")
    host = sim.host
    frames = frames_arg(sim, frames, "referenced")
    if op == "test_young":
        return _test_young(sim, frames)
    young = np.empty(frames.size, dtype=bool)
    table = sim.fast.young_table(op)
    if table is not None:  # every subscriber's young op is the standard one: one compiled pass
        _young_fast(sim, frames, op, table, young)
        return young
    keys = np.empty(frames.size, dtype=np.int64)
    lens = np.empty(frames.size, dtype=np.int64)
    _test_clear_young(host._ft.key, host._pt.flags, frames, keys, lens, young)
    asked = lens > 0
    for mm, sel, pages in _by_mm(sim, np.where(asked, keys, -1)):
        if mm.chain:
            young[sel] |= mm.chain.young(op, pages, pages + lens[sel])
    if not asked.all():  # a THP's later frames: its answer
        young = young[np.maximum.accumulate(np.where(asked, np.arange(frames.size), 0))]
    return young


def _test_young(sim: "Simulation", frames: np.ndarray) -> np.ndarray:
    """``referenced`` with ``test_young``: each frame's folio's young bits, read and left alone."""
    young = np.zeros(frames.size, dtype=bool)
    keys = sim.host._ft.key[frames].astype(np.int64)
    for mm, sel, pages in _by_mm(sim, np.where(keys >= 0, keys, -1)):
        huge = (mm.flags[pages] & P_HUGE) != 0
        first = np.where(huge, pages - (frames[sel] & (HUGE_PAGES - 1)), pages)
        end = first + np.where(huge, HUGE_PAGES, 1)
        every = expand_ranges(first, end)  # a THP's every page: one accessed bit for the whole (its PMD's)
        seen = (mm.flags[every] & P_YOUNG) != 0
        if mm.chain:
            seen |= mm.chain.young("test_young", every, every + 1)
        young[sel] = sum_per_range(first, end, seen) > 0
    return young


def charge_reclaim(sim: "Simulation", scanned: int, swapped: int) -> float:
    """Charge reclaim's own CPU work and return it in ns: ``scanned`` pages examined (``costs.reclaim_scan_ns``
    each: the LRU scan, folio_referenced's rmap walk and young test) and ``swapped`` pages written to swap
    (``costs.swap_out_ns`` each), through ``sim.charge`` (to the client stalled in direct reclaim, else host CPU
    time). ``scan_frames``, ``referenced`` and ``swap_out`` charge nothing themselves; a secondary MMU charges its
    own aging and invalidation work inside the calls they make."""
    scanned = count_arg(scanned, "charge_reclaim", "scanned")
    swapped = count_arg(swapped, "charge_reclaim", "swapped")
    ns = scanned * sim.costs.reclaim_scan_ns + swapped * sim.costs.swap_out_ns
    sim.charge(ns)
    return ns


def swap_out(sim: "Simulation", frames: np.ndarray) -> int:
    """Unmap ``frames`` from every secondary and the primary table, write them to swap, free them.

    Pinned, free, shared or device-private frames are skipped (device memory is on no LRU). Returns the
    number of pages swapped out. Charges nothing: the caller charges the write (``charge_reclaim``); the
    secondaries charge their invalidations themselves.
    """
    host = sim.host
    frames = frames_arg(sim, frames, "swap_out")
    if host.device_nodes:
        frames = frames[host.nodes_of(frames) < host.nodes]
    keys = host._ft.key[frames].astype(np.int64)
    done = 0
    for mm, sel, pages in _by_mm(sim, keys):
        mine = frames[sel]
        huge = (mm.flags[pages] & P_HUGE) != 0
        if huge.any():  # old THPs: whole into a free swap cluster, or split and their pages as 4 KiB ones
            small = [(mine[~huge], pages[~huge])]
            for first in np.unique(pages[huge] & ~(HUGE_PAGES - 1)).tolist():
                swapped, fallback = _swap_out_thp(sim, mm, first)
                done += swapped
                if fallback:
                    small.append(
                        (mm.pte[first : first + HUGE_PAGES].astype(np.int64), np.arange(first, first + HUGE_PAGES))
                    )
            mine = np.concatenate([f for f, _ in small])
            pages = np.concatenate([p for _, p in small])
            if not pages.size:
                continue
        subs = None if sim.kernel.invalidate_page else sim.fast.subscribers(mm, INVALIDATE_OPS)
        if subs is not None and subs.size:  # every subscriber's invalidation is the standard one: compiled
            done += _swap_out_fast(sim, mm, mine, pages, subs)
            continue
        if not mm.chain:  # nobody to tell: the pages still record who reclaimed them
            done += swap_out_frames(host._pt, host._ft, host._sw, host._ctr, mine)
            sim.actors.record(mm.base, pages, pages + 1, f"CLEAR of mm '{mm.name}'", sim.tick)
            continue
        count = 0

        def write_out(mine=mine) -> None:
            nonlocal count
            count = swap_out_frames(host._pt, host._ft, host._sw, host._ctr, mine)

        mm._invalidate_pages(pages, Event.CLEAR, write_out)  # start/end per page, or 2.6.27's invalidate_page
        done += count
    return done


def _swap_out_thp(sim: "Simulation", mm, first: int) -> tuple[int, bool]:
    """Reclaim the old THP at page ``first`` of ``mm``: with a free swap cluster, whole (its PMD split into swap
    entries: try_to_unmap with TTU_SPLIT_HUGE_PMD raises __split_huge_pmd's CLEAR over the 2 MiB, then
    try_to_unmap_one's); without one, split (THP_SWPOUT_FALLBACK: split_folio_to_list, which raises its own
    CLEAR) for the caller to swap out its pages one by one; always so to a swap file (``host.swap_device``).
    Returns (pages swapped, whether it fell back)."""
    host = sim.host
    pt, ft, sw = host._pt, host._ft, host._sw
    frame = int(pt.pte[mm.base + first])
    if ft.pin[frame : frame + HUGE_PAGES].any():  # folio_maybe_dma_pinned: it stays
        host._ctr[C.PIN_SKIPPED] += 1
        return 0, False
    # A swap file gets no large entries (mm/swapfile.c cluster_alloc_swap_entry: SWP_BLKDEV only).
    slot = swap_alloc_cluster(sw.key, sw.free, sw.reg) if host.cfg.swap_device is SwapDevice.blockdev else -1
    if slot < 0:
        host._ctr[C.THP_SWPOUT_FALLBACK] += 1
        split(sim, mm, np.array([first]))
        return 0, True
    whole = NotifierRange(mm, np.array([first]), np.array([first + HUGE_PAGES]), Event.CLEAR)

    def split_pmd() -> None:  # the PMD becomes 512 PTEs, still on the THP's frames
        mm._flags[first : first + HUGE_PAGES] &= clear_mask(P_HUGE)

    result = SWAPPED

    def write_out() -> None:
        nonlocal result
        result = swap_out_thp(pt.pte, pt.flags, ft.key, ft.token, ft.node, ft.lists, ft.pb, ft.bits, sw.key,
                              sw.token, sw.free, sw.reg, host._ctr, mm.base + first, frame, slot)  # fmt: skip

    mm.invalidate(whole, split_pmd)
    mm.invalidate(whole, write_out)
    return (HUGE_PAGES if result == SWAPPED else 0), False


def _young_fast(sim: "Simulation", frames: np.ndarray, op: str, table: np.ndarray, young: np.ndarray) -> None:
    host, tables = sim.host, sim._secondary_tables
    nsec = max(len(sim.secondaries), 1)
    wrong = np.zeros((nsec, 2), dtype=np.int64)
    first = np.zeros((nsec, 2), dtype=np.int64)
    young_frames(np.ascontiguousarray(frames, dtype=np.int64), young, host._ft.key, host._pt.flags, host._pt.mm_base,
                 table, tables.offset, tables.sflags, tables.shadow, tables.acc, op == "clear_flush_young", wrong,
                 first)  # fmt: skip
    _settle_young(sim, op, table, wrong, first)


def _settle_young(sim: "Simulation", op: str, table: np.ndarray, wrong: np.ndarray, first: np.ndarray) -> None:
    """After ``young_frames``: each subscriber charges its aging, and the young op's postcondition is judged."""
    for j in np.unique(table[table >= 0]).tolist():
        sec = sim.secondaries[j]
        sec._settle_aging()
        if wrong[j].any() and sim.engine.check_invariants:
            report_young(sim, sec, op, int(wrong[j, 0]), int(first[j, 0]), int(wrong[j, 1]), int(first[j, 1]), 0, 0)


def _swap_out_fast(sim: "Simulation", mm, frames: np.ndarray, pages: np.ndarray, subs: np.ndarray) -> int:
    host, tables = sim.host, sim._secondary_tables
    pt, ft, sw = host._pt, host._ft, host._sw
    event = sim.actors.event(f"CLEAR of mm '{mm.name}'", sim.tick)
    count = swap_out_pages(np.ascontiguousarray(frames, dtype=np.int64), pages, mm.base, subs, tables.offset,
                           tables.spte, tables.sflags, tables.shadow, tables.state, tables.acc, pt.pte, pt.flags,
                           ft.key, ft.token, ft.pin, ft.node, ft.lists, ft.pb, ft.bits, sw.key, sw.token, sw.free,
                           sw.reg, host._ctr, sim.actors._changed, event)  # fmt: skip
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
