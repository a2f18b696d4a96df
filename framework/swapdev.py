"""The swap device: slots holding the content of swapped-out pages, and the copies through it.

A swap-out takes the lowest free slot, found through a bitmap of free slots and a summary of its words.
(The kernel hands out slots by clusters per CPU, next-fit within them; which slot a page gets changes no
count the simulator reports, and lowest-first keeps the slot table's touched part, its memory, as small as
the swap in use.) A slot is freed when its page is swapped back in (no swap cache is modelled: a page
swapped in is written again on its next swap-out).

I/O errors can be injected (``host.swap_write_error_rate``, ``host.swap_read_error_rate``): each write or
read fails with that probability, decided by a counter-based hash of the run's seed, so a run is
reproducible. A failed write keeps the page resident and mapped (the kernel redirties it and keeps it);
a failed read fails the access that needed the page, as a memory error for its client (SIGBUS, or an
error KVM reports to the guest), and leaves the page in its slot for a later access to read again.
Either way no content is lost.
"""

from typing import NamedTuple

import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from . import counters as C
from .frames import LRU_ACTIVE, LRU_REFERENCED, free_frame
from .kernel import AHEAD, U, kernel, prefetch
from .pagebits import HUGE_PAGES, P_DIRTY, P_HUGE, P_PROTNONE, P_YOUNG, clear_mask, swap_entry

SLOT_FREE = 0  # SwapTable.key of a free slot; a used one holds its page's key + 1 (zero-filled memory is free)
# SwapTable.reg: the lowest summary word that may show a free slot, slots in use, I/O error thresholds
# (probability x 2**32), I/Os decided, seed, where the summary starts in SwapTable.free, the workingset's clock
# (lruvec->nonresident_age), the workingset size a refault is measured against (-1: no refault activation),
# refaults activated (WORKINGSET_ACTIVATE_ANON), the eviction time's bucket order, then from REG_EVICTED on each
# slot's eviction time, 16 bits a slot, four to a register (``workingset_eviction``).
(REG_HINT, REG_USED, REG_WRITE_ERRORS, REG_READ_ERRORS, REG_IO_COUNT, REG_IO_SEED, REG_SUMMARY, REG_NONRESIDENT_AGE,
 REG_WORKINGSET, REG_WORKINGSET_ACTIVATE, REG_BUCKET_ORDER, REG_EVICTED) = range(12)  # fmt: skip
EVICTION_BITS = 16  # as mm/workingset.c packs the eviction time into a shadow entry: its low bits, in buckets
_EVICTION_MASK = (1 << EVICTION_BITS) - 1

_ONE = np.uint64(1)
_UNMAP_CLEAR = clear_mask(P_YOUNG | P_DIRTY | P_HUGE | P_PROTNONE)  # a swap entry is no hinting entry
SWAPPED, SWAP_FULL, NOT_RECLAIMABLE, WRITE_FAILED = 1, 0, -1, -2


class SwapTable(NamedTuple):
    key: np.ndarray  # int32 per slot: the page key it holds + 1, or SLOT_FREE
    token: np.ndarray  # uint32 per slot: the content it holds
    reg: np.ndarray  # int64 registers, REG_*
    # uint64: a bit per slot, set while free (64 slots a word), then from reg[REG_SUMMARY] a bit per word,
    # set while the word has a free slot
    free: np.ndarray


def new_swap_table(slots: int, write_error_rate: float = 0.0, read_error_rate: float = 0.0,
                   seed: int = 0) -> SwapTable:  # fmt: skip
    reg = np.zeros(REG_EVICTED + -(-slots // 4), dtype=np.int64)
    reg[REG_WORKINGSET] = -1  # until a two-list reclaim publishes its active list's size
    # workingset_init: buckets of 2**order pages, so that the 16 bits span the device's slots
    reg[REG_BUCKET_ORDER] = max(0, max(slots - 1, 1).bit_length() - EVICTION_BITS)
    reg[REG_WRITE_ERRORS] = round(write_error_rate * 2**32)
    reg[REG_READ_ERRORS] = round(read_error_rate * 2**32)
    reg[REG_IO_SEED] = seed & (2**62 - 1)
    words = -(-slots // 64)
    summary = -(-words // 64)
    reg[REG_SUMMARY] = words
    free = np.zeros(words + summary + 1, dtype=np.uint64)  # one spare summary word: the search's sentinel
    bits = np.zeros(words * 64, dtype=bool)
    bits[:slots] = True
    free[:words] = np.packbits(bits, bitorder="little").view(np.uint64)
    marks = np.zeros(summary * 64, dtype=bool)
    marks[:words] = True
    free[words : words + summary] = np.packbits(marks, bitorder="little").view(np.uint64)
    return SwapTable(key=np.zeros(slots, dtype=np.int32), token=np.zeros(slots, dtype=np.uint32), reg=reg, free=free)


@kernel(inline=True)
def io_fails(sreg, which):
    """Whether this swap I/O fails (``which``: REG_WRITE_ERRORS or REG_READ_ERRORS): splitmix64 of the
    I/O's number and the seed against the threshold."""
    threshold = sreg[which]
    if threshold == 0:
        return False
    sreg[REG_IO_COUNT] += 1
    z = np.uint64(sreg[REG_IO_COUNT]) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(sreg[REG_IO_SEED])
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(32)) < np.uint64(threshold)


@kernel(inline=True)
def swap_alloc(skey, stoken, sfree, sreg, key, token):
    """Store ``token`` for page ``key`` in the lowest free slot and return the slot, or -1 if swap is full."""
    if sreg[REG_USED] >= skey.size:
        return -1
    summary = sreg[REG_SUMMARY]
    s = sreg[REG_HINT]  # every summary word below it is empty
    while sfree[summary + s] == 0:
        s += 1
    sreg[REG_HINT] = s
    w = s * 64 + trailing_zeros(sfree[summary + s])
    word = sfree[w]
    c = w * 64 + trailing_zeros(word)
    word &= word - _ONE
    sfree[w] = word
    if word == 0:
        sfree[summary + s] &= ~(_ONE << np.uint64(w & 63))
    skey[c] = key + 1
    stoken[c] = token
    sreg[REG_USED] += 1
    return c


@kernel
def swap_alloc_cluster(skey, sfree, sreg):
    """The first slot of the lowest free swap cluster (512 free slots, aligned: SWAPFILE_CLUSTER), taken whole
    for a THP; -1 if none is free. The caller fills the slots' keys and tokens (``swap_out_thp``)."""
    summary = sreg[REG_SUMMARY]
    words = HUGE_PAGES // 64
    full = ~np.uint64(0)
    for first in range(0, summary - summary % words, words):  # whole clusters only
        free = True
        for w in range(first, first + words):
            free &= sfree[w] == full
        if free:
            for w in range(first, first + words):
                sfree[w] = np.uint64(0)
            for w in range(first, first + words):  # the summary's bits of those words
                sfree[summary + (w >> 6)] &= ~(_ONE << np.uint64(w & 63))
            sreg[REG_USED] += HUGE_PAGES
            return first * 64
    return -1


@kernel
def swap_out_thp(pte, pflags, fkey, ftoken, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr, first_key, frame,
                 slot):  # fmt: skip
    """Write the THP at ``first_key`` (mapped by the pageblock at ``frame``) whole to the free swap cluster at
    ``slot`` (``swap_alloc_cluster``), as shrink_folio_list does with a large folio add_to_swap placed in one
    cluster (THP_SWPOUT): its PTEs become the cluster's swap entries in order and its pageblock is freed. One
    I/O for the folio: if it fails, the pages stay resident and the cluster is freed. Returns SWAPPED or
    WRITE_FAILED."""
    if io_fails(sreg, REG_WRITE_ERRORS):
        for i in range(HUGE_PAGES):
            swap_free(skey, stoken, sfree, sreg, slot + i)
        ctr[C.SWAP_WRITE_ERRORS] += 1
        return WRITE_FAILED
    for i in range(HUGE_PAGES):
        key = first_key + i
        _set_eviction(sreg, slot + i)  # one eviction time for the folio (workingset_eviction)
        skey[slot + i] = key + 1
        stoken[slot + i] = ftoken[frame + i]
        pte[key] = swap_entry(slot + i)
        pflags[key] &= _UNMAP_CLEAR
        free_frame(node, lists, pb, bits, fkey, ftoken, frame + i)
    sreg[REG_NONRESIDENT_AGE] += HUGE_PAGES  # workingset_age_nonresident(lruvec, folio_nr_pages(folio))
    ctr[C.SWAP_OUTS] += HUGE_PAGES
    ctr[C.THP_SWPOUT] += 1
    return SWAPPED


@kernel(inline=True)
def swap_free(skey, stoken, sfree, sreg, slot):
    skey[slot] = SLOT_FREE
    stoken[slot] = 0
    sreg[REG_USED] -= 1
    w = slot >> 6
    sfree[w] |= _ONE << np.uint64(slot & 63)
    s = w >> 6
    sfree[sreg[REG_SUMMARY] + s] |= _ONE << np.uint64(w & 63)
    if s < sreg[REG_HINT]:
        sreg[REG_HINT] = s


@kernel(inline=True)
def swap_out_frame(pte, pflags, fkey, ftoken, fpin, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr, f):
    """Write frame ``f``'s page to swap, point its PTE at the slot and free the frame.

    The caller has already invalidated every secondary translation of the page (through the notifier
    chain). Returns SWAPPED; SWAP_FULL (nothing changed); NOT_RECLAIMABLE for a free, orphaned or
    pinned frame, which reclaim must leave alone (the kernel undoes the unmap of a maybe-pinned page); or
    WRITE_FAILED: the write failed, the page stays resident and mapped.
    """
    key = fkey[f]
    if key < 0 or fpin[f] > 0:
        if fpin[f] > 0:
            ctr[C.PIN_SKIPPED] += 1
        return NOT_RECLAIMABLE
    slot = swap_alloc(skey, stoken, sfree, sreg, key, ftoken[f])
    if slot < 0:
        return SWAP_FULL
    if io_fails(sreg, REG_WRITE_ERRORS):
        swap_free(skey, stoken, sfree, sreg, slot)
        ctr[C.SWAP_WRITE_ERRORS] += 1
        return WRITE_FAILED
    pte[key] = swap_entry(slot)
    pflags[key] &= _UNMAP_CLEAR
    free_frame(node, lists, pb, bits, fkey, ftoken, f)
    workingset_eviction(sreg, slot, 1)
    ctr[C.SWAP_OUTS] += 1
    return SWAPPED


@kernel(inline=True)
def workingset_eviction(sreg, slot, pages):
    """mm/workingset.c workingset_eviction: the slot keeps the workingset clock's reading (the shadow entry's
    eviction time) and the clock advances by the folio's pages (workingset_age_nonresident)."""
    _set_eviction(sreg, slot)
    sreg[REG_NONRESIDENT_AGE] += pages


@kernel(inline=True)
def _set_eviction(sreg, slot):
    """Keep the clock's reading for ``slot``: its low EVICTION_BITS in buckets of 2**REG_BUCKET_ORDER pages
    (pack_shadow after ``eviction >>= bucket_order``)."""
    stamp = (sreg[REG_NONRESIDENT_AGE] >> sreg[REG_BUCKET_ORDER]) & _EVICTION_MASK
    w = REG_EVICTED + (slot >> 2)
    shift = (slot & 3) * EVICTION_BITS
    sreg[w] = (sreg[w] & ~(_EVICTION_MASK << shift)) | (stamp << shift)


@kernel(inline=True)
def _refault_distance(sreg, slot):
    """workingset_test_recent: (refault - eviction) & EVICTION_MASK, in pages (``eviction <<= bucket_order``). As
    in the kernel, an entry older than the bits span aliases to a small distance (an occasional false
    activation, which the kernel's comment accepts)."""
    order = sreg[REG_BUCKET_ORDER]
    stamp = (sreg[REG_EVICTED + (slot >> 2)] >> ((slot & 3) * EVICTION_BITS)) & _EVICTION_MASK
    return (((sreg[REG_NONRESIDENT_AGE] >> order) - stamp) & _EVICTION_MASK) << order


@kernel(inline=True)
def folio_mark_accessed(fref, sreg, f, pages):
    """mm/swap.c folio_mark_accessed on the folio whose LRU flags are frame ``f``'s (``pages`` long): the first
    mark sets PG_referenced; a mark on a referenced inactive folio activates it (folio_activate, or
    __lru_cache_activate_folio for one still in the per-CPU batch), clears PG_referenced and advances the
    workingset clock (workingset_activation -> workingset_age_nonresident)."""
    if not fref[f] & LRU_REFERENCED:
        fref[f] |= LRU_REFERENCED
    elif not fref[f] & LRU_ACTIVE:
        fref[f] = (fref[f] | LRU_ACTIVE) & ~LRU_REFERENCED
        sreg[REG_NONRESIDENT_AGE] += pages


@kernel(inline=True)
def workingset_refault(sreg, slot):
    """mm/workingset.c workingset_refault (workingset_test_recent) for the anonymous page swapped in from ``slot``:
    activate it when its refault distance (evictions and activations since it was evicted) is at most the
    workingset size (an anonymous refault with swap free: NR_ACTIVE_ANON, the model having no file pages), which
    two-list reclaim publishes in REG_WORKINGSET at its last read of the statistics (``lru_stats``; -1: one list or
    exact CLOCK, no activation). An activation advances the clock (workingset_age_nonresident). Returns whether
    it activates."""
    size = sreg[REG_WORKINGSET]
    if size < 0 or _refault_distance(sreg, slot) > size:
        return False
    sreg[REG_NONRESIDENT_AGE] += 1
    sreg[REG_WORKINGSET_ACTIVATE] += 1
    return True


@kernel
def swap_out_frames(pt, ft, sw, ctr, frames):
    """Swap out each of ``frames`` until swap fills; return how many went."""
    pte, pflags = pt.pte, pt.flags
    fkey, ftoken, fpin, node, lists, pb, bits = ft.key, ft.token, ft.pin, ft.node, ft.lists, ft.pb, ft.bits
    skey, stoken, sfree, sreg = sw.key, sw.token, sw.free, sw.reg
    count = 0
    for i in range(frames.size):
        if i + AHEAD < frames.size and fkey[frames[i + AHEAD]] >= 0:  # frames in order, their pages at random
            prefetch(pte, U(fkey[frames[i + AHEAD]]))
            prefetch(pflags, U(fkey[frames[i + AHEAD]]))
        f = frames[i]
        r = swap_out_frame(pte, pflags, fkey, ftoken, fpin, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr, f)
        if r == SWAP_FULL:
            break
        if r == SWAPPED:
            count += 1
    return count
