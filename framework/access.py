"""The access hot path: one client's batch of accesses, run in order, in numba.

A client is a CPU thread of a process (accesses go through the primary page table) or a secondary MMU's
device (vCPUs, a NIC, a GPU: accesses go through the secondary's own table). ``run_accesses`` walks the
batch from ``ks[K_I]``; a hit touches the frame; a miss is a fault resolved through the primary table
(allocating a frame, or swapping the page in), and for a secondary, installed in its table under the
invalidation-sequence rule of KVM and of the interval notifiers:

    seq = snapshot of the secondary's invalidate sequence      (mmu_invalidate_seq / read_begin)
    resolve the page through the primary table                 (may reclaim, and so invalidate)
    if an invalidation in progress covers the page, or seq moved: retry
                                                    (mmu_invalidate_retry_gfn / mmu_interval_read_retry)
    else install the translation (and pin it, in pin mode)

Whenever Python must act (wake kswapd, run direct reclaim, deliver a notifier for an eviction) the kernel
saves its place in ``ks`` and returns a status; the engine acts and calls it again. The fault in flight
keeps its sequence snapshot across that return, so an invalidation run by the reclaim it triggered makes
it retry, exactly as in KVM.

Reclaim modes. Batched (the default): allocation follows the kernel's watermarks (low: wake kswapd; min:
direct reclaim), and the reclaim itself runs in Python through the host policy's ``reclaim`` hook. Exact
CLOCK: no watermarks; an allocation with no free frame evicts exactly one page chosen by the CLOCK hand,
here, inline. A victim whose mm has notifier subscribers is handed back to Python so the chain is called
before its frame is reused. Its reference bit is ``FrameTable.ref``, set by every access the reclaimer
can see: CPU accesses and accesses through a secondary that reports accessed bits (``SEC_YOUNG``).
"""

import numpy as np

from . import counters as C
from .fastpath import swap_out_pages
from .frames import (
    FREE,
    KSWAPD_FUTILE,
    LRU_ACTIVE,
    LRU_LISTS,
    MEMCG,
    NFREE,
    ORPHAN,
    PAGEBLOCK_SHIFT,
    PB_NODE,
    RECLAIM_FUTILE,
    REG_CLOCK_HAND,
    REG_FLAGS,
    REG_HINTS,
    SHARED,
    THP_ENABLED,
    THP_MADVISE,
    WMARK_LOW,
    WMARK_MIN,
    alloc_frame,
    alloc_pageblock,
    free_frame,
    is_device_frame,
)
from .kernel import AHEAD, U, kernel, prefetch
from .numafaults import migrate_in_fault, numa_target
from .pagebits import (
    HUGE_PAGES,
    P_DEVICE,
    P_DIRTY,
    P_HUGE,
    P_PROTNONE,
    P_READ,
    P_VMA,
    P_VMA_RW,
    P_WRITE,
    P_YOUNG,
    PTE_NONE,
    S_ACCESSED,
    S_HUGE,
    S_PINNED,
    S_WRITABLE,
    SH_ACCESSED,
    SH_PINNED,
    swap_slot,
)
from .pagetable import MM_HAS_NOTIFIERS, MM_HUGEPAGE
from .secondary import (
    DEV_NODE,
    FAULT_BLOCK,
    IN_PROGRESS,
    INV_HI,
    INV_LO,
    MODE,
    PREFETCH,
    RACE_COUNT,
    RACE_RATE,
    REGION_HI,
    REGION_LO,
    SEC_HUGE,
    SEC_NOFAULT,
    SEC_PIN,
    SEC_RETRY_WHOLE_VM,
    SEC_YOUNG,
    SEQ,
)
from .swapdev import (
    REG_IO_SEED,
    REG_READ_ERRORS,
    SWAPPED,
    WRITE_FAILED,
    folio_mark_accessed,
    io_fails,
    swap_free,
    swap_out_frame,
    workingset_refault,
)

# Kernel state (ks): where a batch stopped and the fault in flight.
(K_I, K_SEQ, K_LEVEL, K_RETRIES, K_VICTIM, K_FRESH, K_SKIP, K_FRAME, K_COMPACTED, K_WINDOW, K_WFRAME,
 K_WRECLAIMS, K_EXACT) = range(13)  # fmt: skip
KS_SIZE = 13  # K_SKIP: Python could not serve the access at K_I; skip it. K_FRAME: COW_BREAK's new frame
# (DIRECT_COMPACT: the faulting node). K_COMPACTED: this THP fault has had its direct compaction.
# K_WINDOW: a secondary fault slept in a race window (RACE_WINDOW) after resolving frame K_WFRAME.
# K_WRECLAIMS: race windows whose reclaim the kernel ran itself, through the fast path (mmnsim.fastpath).
# K_EXACT: the exact-CLOCK mode (a flag kept here: a call of more than 30 arguments cannot be inlined)

# Statuses returned by run_accesses.
(DONE, WAKE_KSWAPD, DIRECT_RECLAIM, EVICT_ONE, LIVELOCK, MIGRATE_TO_RAM, COW_BREAK, DIRECT_COMPACT,
 FAULT_AROUND, RACE_WINDOW, STALE_INSTALL, NUMA_MIGRATE, NUMA_HINT) = range(13)  # fmt: skip
STATUS_NAMES = ("done", "wake_kswapd", "direct_reclaim", "evict_one", "livelock", "migrate_to_ram", "cow_break",
                "direct_compact", "fault_around", "race_window", "stale_install", "numa_migrate",
                "numa_hint")  # fmt: skip
# NUMA_HINT is the kernel's own (``_miss`` hands a hinting fault to ``run_accesses``); NUMA_MIGRATE asks Python to
# migrate the page at K_VICTIM to node K_FRAME (a THP, or an mm whose subscribers the compiled path cannot serve).

# Internal results of resolving a fault; a status for Python is encoded as _ASK - status.
_OK, _ERR, _FAIL = -1, -2, -3
_ASK = -100
# What _miss tells the loop.
_AGAIN, _NEXT = 0, 1

MAX_RETRIES = 64  # a fault retried this often means a subscriber never ends its invalidation


def new_kernel_state() -> np.ndarray:
    ks = np.zeros(KS_SIZE, dtype=np.int64)
    ks[K_SEQ] = -1
    return ks


@kernel(inline=True)
def clock_victim(fkey, fpin, fref, reg, pb, node_order):
    """Advance the CLOCK hand to the next frame without its reference bit, clearing bits on the way.

    Free, orphaned, pinned and device-private frames are passed over. Returns -1 if two sweeps find
    nothing.
    """
    n = fkey.size
    hand = reg[REG_CLOCK_HAND]
    for _ in range(2 * n + 1):
        f = hand
        hand = hand + 1 if hand + 1 < n else 0
        if fkey[f] < 0 or fpin[f] > 0 or is_device_frame(pb, node_order, f):
            continue
        if fref[f]:
            fref[f] = 0
            continue
        reg[REG_CLOCK_HAND] = hand
        return f
    reg[REG_CLOCK_HAND] = hand
    return -1


@kernel(inline=True)
def _fail_allocation(reg, ctr):
    """Reclaim made no progress: out_of_memory() (one oom_event per failing allocation, as memcg counts its
    MEMCG_OOM events), and the allocation fails. Later allocations of the tick fail at once (the kernel
    would reclaim again, in vain)."""
    ctr[C.ALLOC_FAILURES] += 1
    ctr[C.OOM_EVENTS] += 1
    reg[REG_FLAGS] |= RECLAIM_FUTILE
    return _FAIL


# The numba functions below take arrays, not the PageTable/FrameTable/SwapTable tuples: numba
# reference-counts every field taken out of a tuple, which would cost more than a fault's own work.
# run_accesses unpacks the tuples once per call.


@kernel(inline=True)
def _allocate(ks, ctr, pte, pflags, mm_base, mm_flags, fkey, ftoken, fpin, fref, pb, bits, lists, node,
              node_order, reg, skey, stoken, sfree, sreg, key, nid):  # fmt: skip
    """A frame for ``key``, preferring node ``nid``; or _ASK - status for Python; or _FAIL."""
    nodes = node_order.shape[1]
    if ks[K_EXACT]:
        write_errors = 0
        while True:
            for j in range(nodes):
                n = node_order[nid, j]
                if node[n, NFREE] > 0:
                    return alloc_frame(node, lists, pb, bits, fkey, fref, n, key)
            if reg[REG_FLAGS] & RECLAIM_FUTILE:
                return _fail_allocation(reg, ctr)
            v = clock_victim(fkey, fpin, fref, reg, pb, node_order)
            if v < 0:
                return _fail_allocation(reg, ctr)
            if mm_flags[np.searchsorted(mm_base, fkey[v], side="right") - 1] & MM_HAS_NOTIFIERS:
                ks[K_VICTIM] = v
                return _ASK - EVICT_ONE
            ctr[C.PGSCAN] += 1
            r = swap_out_frame(
                pte, pflags, fkey, ftoken, fpin, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr, v
            )
            if r == WRITE_FAILED and write_errors < fkey.size:  # the victim stays; the hand moves on
                write_errors += 1
                continue
            if r != SWAPPED:
                return _fail_allocation(reg, ctr)
    if ks[K_LEVEL] == 0:
        for j in range(nodes):
            n = node_order[nid, j]
            if node[n, NFREE] > node[n, WMARK_LOW]:
                return alloc_frame(node, lists, pb, bits, fkey, fref, n, key)
        ks[K_LEVEL] = 1
        if not reg[REG_FLAGS] & (KSWAPD_FUTILE | MEMCG):  # a memory cgroup's limit has no kswapd
            return _ASK - WAKE_KSWAPD
    for j in range(nodes):
        n = node_order[nid, j]
        if node[n, NFREE] > node[n, WMARK_MIN]:
            return alloc_frame(node, lists, pb, bits, fkey, fref, n, key)
    if ks[K_LEVEL] == 1 and not reg[REG_FLAGS] & RECLAIM_FUTILE:
        ks[K_LEVEL] = 2
        return _ASK - DIRECT_RECLAIM
    return _fail_allocation(reg, ctr)


@kernel
def huge_fault(ctr, pte, pflags, mm_base, fkey, fref, pb, bits, lists, node, node_order, key, nid, write):
    """do_huge_pmd_anonymous_page: map the whole aligned 2 MiB region around ``key`` with a free
    pageblock if every page of it is untouched and a node has a free block above its low watermark.
    Returns 1 if it did; else the fault falls back to a 4 KiB page: 0 if the region or free memory does not
    allow a THP, -1 if a node has the free memory but no whole free pageblock (compaction could help)."""
    mm = np.searchsorted(mm_base, key, side="right") - 1
    first = mm_base[mm] + ((key - mm_base[mm]) & ~(HUGE_PAGES - 1))
    if first + HUGE_PAGES > mm_base[mm + 1]:
        return 0
    for k in range(first, first + HUGE_PAGES):
        if pte[k] != PTE_NONE or (pflags[k] & P_VMA_RW) != P_VMA_RW:
            return 0
    block = -1
    room = False
    for j in range(node_order.shape[1]):
        n = node_order[nid, j]
        if node[n, NFREE] - HUGE_PAGES > node[n, WMARK_LOW]:
            room = True
            block = alloc_pageblock(node, lists, pb, bits, fkey, fref, n, first)
            if block >= 0:
                break
    if block < 0:
        return -1 if room else 0
    for i in range(HUGE_PAGES):
        pte[first + i] = block + i
        pflags[first + i] |= P_HUGE | P_YOUNG
    if write:
        pflags[key] |= P_DIRTY
    ctr[C.THP_FAULT_ALLOC] += 1
    ctr[C.MINOR_FAULTS] += 1
    return 1


@kernel(inline=True)
def _retry(ks, ctr, sstate, p):
    """mmu_invalidate_retry_gfn (mmu_interval_read_retry for an interval subscriber): _AGAIN, counting a
    retry, if an invalidation in progress covers page ``p`` (any, for an MMU that retries VM-wide, as KVM
    did before 6.3) or the sequence moved since the fault began; _ASK - LIVELOCK after MAX_RETRIES; else _OK."""
    busy = sstate[IN_PROGRESS] != 0 and (
        (sstate[MODE] & SEC_RETRY_WHOLE_VM) != 0 or (sstate[INV_LO] <= p and p < sstate[INV_HI]))  # fmt: skip
    if not busy and sstate[SEQ] == ks[K_SEQ]:
        return _OK
    ctr[C.FAULT_RETRIES] += 1
    ks[K_RETRIES] += 1
    if ks[K_RETRIES] > MAX_RETRIES:
        return _ASK - LIVELOCK
    ks[K_SEQ] = sstate[SEQ]
    return _AGAIN


@kernel(inline=True)
def _kvm_mark_accessed(fref, sreg, f, huge, faulted):
    """A KVM fault marks the page it maps accessed (two-list reclaim only): kvm_release_faultin_page ->
    kvm_release_page_clean/dirty -> kvm_set_page_accessed -> mark_page_accessed (virt/kvm/kvm_main.c, 6.18), and
    before it, when the page was not resident, the gup slow path (hva_to_pfn_slow -> get_user_pages_unlocked,
    which adds FOLL_TOUCH: mm/gup.c follow_page_pte -> folio_mark_accessed), so a page KVM faults in starts
    active; one it finds present (hva_to_pfn_fast, gup-fast, no touch) is marked once. Applied to a secondary
    with young ops (SEC_YOUNG: KVM's). A fault resumed after a race window (``_after_window``) is not marked."""
    pages = 1
    if huge:  # a THP's flags are its first frame's
        f = (f >> PAGEBLOCK_SHIFT) << PAGEBLOCK_SHIFT
        pages = HUGE_PAGES
    if faulted:
        folio_mark_accessed(fref, sreg, f, pages)
    folio_mark_accessed(fref, sreg, f, pages)


@kernel(inline=True)
def _miss(ks, ctr, sstate, spte, sflags, saccessed, pte, pflags, ptoken, mm_base, mm_flags, fkey, ftoken, fpin, fref,
          pb, bits, lists, node, node_order, reg, skey, stoken, sfree, sreg, key, p, write, nid):  # fmt: skip
    """The slow path of one access: a fault, through the secondary (``spte.size > 0``) or the CPU.

    Resolves the page through the primary table (handle_mm_fault) and, for a secondary, installs the
    translation unless an invalidation ran meanwhile. Returns _AGAIN (the access can now proceed),
    _NEXT (it failed and is skipped) or _ASK - status.
    """
    via_sec = spte.size > 0
    exact = ks[K_EXACT] != 0
    if via_sec and sstate[MODE] & SEC_NOFAULT:
        ctr[C.ACCESS_ERRORS] += 1  # no entry and no way to fault one in: the device access fails
        return _NEXT
    if via_sec and ks[K_SEQ] < 0:
        ks[K_SEQ] = sstate[SEQ]
        ctr[C.SECONDARY_FAULTS] += 1
    if via_sec and ks[K_WINDOW]:
        return _after_window(ks, ctr, sstate, spte, sflags, saccessed, pte, pflags, fkey, key, p)
    fl = pflags[key]
    if not fl & P_VMA or (write and not fl & P_WRITE) or (not write and not fl & P_READ):
        ctr[C.ACCESS_ERRORS] += 1
        ks[K_SEQ] = -1
        ks[K_RETRIES] = 0
        ks[K_LEVEL] = 0
        return _NEXT
    e = pte[key]
    cow = huge = major = False
    if e >= 0:
        if fl & P_DEVICE:  # device-private: only its own device maps it; anyone else migrates it back
            if not (via_sec and pb[e >> PAGEBLOCK_SHIFT, PB_NODE] == sstate[DEV_NODE]):
                ks[K_VICTIM] = key
                return _ASK - MIGRATE_TO_RAM
        elif fl & P_PROTNONE:  # a NUMA hinting fault: note where the page should live
            if fl & P_HUGE:  # do_huge_pmd_numa_page: the whole PMD gets its protection back
                first = key - (p & (HUGE_PAGES - 1))
                for k in range(first, first + HUGE_PAGES):
                    pflags[k] &= ~P_PROTNONE
            else:
                pflags[key] = fl & ~P_PROTNONE
            ctr[C.NUMA_HINT_FAULTS] += 1
            if pb[e >> PAGEBLOCK_SHIFT, PB_NODE] == nid:
                ctr[C.NUMA_HINT_FAULTS_LOCAL] += 1
            ks[K_VICTIM] = key  # the caller logs it and may migrate the page (do_numa_page), then retries
            return _ASK - NUMA_HINT
        # A write to a shared (KSM) page copies it (do_wp_page); so does a long-term pin, even for reading
        # (gup_must_unshare). Python remaps the page to the copy inside an invalidation, since other
        # secondary entries may map the shared frame.
        cow = fkey[e] <= SHARED and (write or (via_sec and (sstate[MODE] & SEC_PIN) != 0))
    elif e == PTE_NONE and reg[REG_FLAGS] & THP_ENABLED and not exact:
        # THP at fault time: with host.thp=madvise only in an MADV_HUGEPAGE mm; there (defrag=madvise, the
        # default) a fault that finds no free pageblock compacts directly, once, then retries
        # (vma_thp_gfp_mask: GFP_TRANSHUGE with __GFP_DIRECT_RECLAIM only for madvised VMAs).
        madvised = (mm_flags[np.searchsorted(mm_base, key, side="right") - 1] & MM_HUGEPAGE) != 0
        if madvised or not reg[REG_FLAGS] & THP_MADVISE:
            got = huge_fault(ctr, pte, pflags, mm_base, fkey, fref, pb, bits, lists, node, node_order, key, nid,
                             write)  # fmt: skip
            if got < 0 and madvised and ks[K_COMPACTED] == 0:
                ks[K_COMPACTED] = 1
                ks[K_FRAME] = nid
                return _ASK - DIRECT_COMPACT
            ks[K_COMPACTED] = 0
            if got > 0:
                ks[K_FRESH] = 1
                ks[K_LEVEL] = 0
                huge = True
            elif got < 0:
                ctr[C.THP_FAULT_FALLBACK] += 1
    if cow or (e < 0 and not huge):
        f = _allocate(ks, ctr, pte, pflags, mm_base, mm_flags, fkey, ftoken, fpin, fref, pb, bits, lists, node,
                      node_order, reg, skey, stoken, sfree, sreg, key, nid)  # fmt: skip
        if f == _FAIL:
            ks[K_SEQ] = -1
            ks[K_RETRIES] = 0
            ks[K_LEVEL] = 0
            return _NEXT
        if f < 0:
            return f
        ks[K_LEVEL] = 0
        if cow:
            ftoken[f] = ftoken[e]
            ks[K_VICTIM] = key
            ks[K_FRAME] = f
            return _ASK - COW_BREAK
        if e == PTE_NONE:
            ftoken[f] = ptoken[key]  # 0: a fresh anonymous page is zero-filled
            ctr[C.MINOR_FAULTS] += 1
        else:
            slot = swap_slot(e)
            if io_fails(sreg, REG_READ_ERRORS):  # the access fails; the page stays in its slot
                free_frame(node, lists, pb, bits, fkey, ftoken, f)
                ctr[C.SWAP_READ_ERRORS] += 1
                ks[K_SEQ] = -1
                ks[K_RETRIES] = 0
                return _NEXT
            ftoken[f] = stoken[slot]
            if workingset_refault(sreg, slot):  # a recent refault starts on the active list (two-list reclaim)
                fref[f] = LRU_ACTIVE
            swap_free(skey, stoken, sfree, sreg, slot)
            major = True
            ctr[C.MAJOR_FAULTS] += 1
            ctr[C.SWAP_INS] += 1
        pte[key] = f
        pflags[key] = fl | P_YOUNG | (P_DIRTY if write else 0)
        ks[K_FRESH] = 1  # the page was not resident: for CLOCK, this access is the miss, not a reference
    if not via_sec:
        return _AGAIN
    # A swap-in sleeps on its I/O holding the frame it resolved, and the host runs meanwhile: Python
    # invalidates the page through the real mm operations, then resumes here. (Not in exact-CLOCK mode,
    # whose reclaim is one inline eviction per allocation, nothing concurrent; not for a pinning device,
    # whose gup pins the page before it sleeps; once per fault.)
    window = major and not exact and sstate[RACE_RATE] != 0 and ks[K_RETRIES] == 0 and not (sstate[MODE] & SEC_PIN)
    if window and not pflags[key] & (P_HUGE | P_DEVICE) and _race(sstate, sreg):
        ks[K_WINDOW] = 1
        ks[K_WFRAME] = pte[key]
        ks[K_VICTIM] = key
        return _ASK - RACE_WINDOW
    retry = _retry(ks, ctr, sstate, p)
    if retry != _OK:
        return retry
    if reg[REG_FLAGS] & LRU_LISTS and sstate[MODE] & SEC_YOUNG:
        _kvm_mark_accessed(fref, sreg, pte[key], (pflags[key] & P_HUGE) != 0, ks[K_FRESH] != 0)
    # Install the translation, for the whole 2 MiB if the primary maps a THP and the MMU maps huge pages
    # (KVM's host-mapping-level rule); in pin mode take a long-term pin on each frame (once per entry).
    lo, hi = p, p + 1
    if pflags[key] & P_HUGE and sstate[MODE] & SEC_HUGE:
        first = p & ~(HUGE_PAGES - 1)  # (the region is in the plugin's state: the table's size bounds it too)
        if first >= sstate[REGION_LO] and first + HUGE_PAGES <= min(sstate[REGION_HI], spte.size):
            lo, hi = first, first + HUGE_PAGES
    size_bit = S_HUGE if hi - lo > 1 else 0
    for q in range(lo, hi):
        _install(ctr, sstate, spte, sflags, saccessed, pte, pflags, fkey, fpin, q, key - p + q, size_bit)
    if hi - lo == 1 and sstate[PREFETCH] > 1 and sstate[IN_PROGRESS] == 0:
        _prefetch(ctr, sstate, spte, sflags, saccessed, pte, pflags, fkey, fpin, key, p)
    ks[K_SEQ] = -1
    ks[K_RETRIES] = 0
    if sstate[FAULT_BLOCK] > 1 and hi - lo < sstate[FAULT_BLOCK]:  # the driver maps the block around it
        ks[K_VICTIM] = p
        return _ASK - FAULT_AROUND
    return _AGAIN


@kernel(inline=True)
def _install(ctr, sstate, spte, sflags, saccessed, pte, pflags, fkey, fpin, q, k, size_bit):
    """Map secondary page ``q`` to the frame primary page ``k`` holds, with its accessed bit clear; in pin
    mode with a long-term pin on the frame (once per entry)."""
    f = pte[k]
    old = spte[q]
    sfl = size_bit | (S_WRITABLE if pflags[k] & P_WRITE and fkey[f] >= 0 else 0)  # shared: read-only
    pin = (sstate[MODE] & SEC_PIN) != 0
    # Whether the old entry holds a pin is the framework's record (SH_PINNED), not the plugin's S_PINNED;
    # a frame number the plugin rewrote out of range, or to a frame without pins, is not unpinned.
    if saccessed[q] & SH_PINNED and 0 <= old < fpin.size:
        if old == f and pin:
            sfl |= S_PINNED
            pin = False
        elif fpin[old] > 0:
            fpin[old] -= 1
            ctr[C.PINS_RELEASED] += 1
    if pin:
        fpin[f] += 1
        ctr[C.PINS_ACQUIRED] += 1
        sfl |= S_PINNED
    spte[q] = f
    sflags[q] = sfl
    saccessed[q] = SH_PINNED if sfl & S_PINNED else 0


@kernel(inline=True)
def _prefetch(ctr, sstate, spte, sflags, saccessed, pte, pflags, fkey, fpin, key, p):
    """After a fault on secondary page ``p`` mapped one 4 KiB entry: map the neighbours in its aligned block
    of ``sstate[PREFETCH]`` pages that have no entry, in order from the block's start, while the primary
    table maps their pages (arch/x86/kvm/mmu/paging_tmpl.h FNAME(pte_prefetch): present sptes and the
    faulting one are skipped, and the first gpte FNAME(prefetch_gpte) cannot map, its host page not found by
    get_user_page_fast_only, ends the block). Nothing is faulted in and nothing counts as an access; the
    entries' accessed bits stay clear, as make_spte leaves a prefetched spte's. (The guest's own page
    table is not modelled: every neighbour's gpte counts as present and accessed.)"""
    block = sstate[PREFETCH]
    first = p & ~(block - 1)
    lo = max(first, sstate[REGION_LO])
    hi = min(first + block, sstate[REGION_HI], spte.size)
    for q in range(lo, hi):
        if q == p or spte[q] >= 0:
            continue
        k = key - p + q
        fl = pflags[k]
        if pte[k] < 0 or not fl & P_VMA or not fl & P_READ or fl & (P_PROTNONE | P_DEVICE):
            break
        _install(ctr, sstate, spte, sflags, saccessed, pte, pflags, fkey, fpin, q, k, 0)
        ctr[C.SECONDARY_PREFETCHED] += 1


@kernel(inline=True)
def _race(sstate, sreg):
    """Whether this secondary fault sleeps in a race window: splitmix64 of the MMU's fault number and the
    run's seed against the rate (as ``swapdev.io_fails``): seeded and reproducible."""
    sstate[RACE_COUNT] += 1
    z = np.uint64(sstate[RACE_COUNT]) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(sreg[REG_IO_SEED] ^ 0x5DEECE66D)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(32)) < np.uint64(sstate[RACE_RATE])


@kernel(inline=True)
def _after_window(ks, ctr, sstate, spte, sflags, saccessed, pte, pflags, fkey, key, p):
    """The fault resumes after its race window with the frame it resolved before sleeping: the retry rule
    decides (mmu_invalidate_retry_gfn / mmu_interval_read_retry); if it passes, that frame is installed,
    whatever the primary table maps now: an MMU whose sequence did not move while the host invalidated
    the page installs a stale entry, as it would in the kernel, and the kernel returns STALE_INSTALL so
    that Python reports it at once (the access then proceeds through the stale entry)."""
    ks[K_WINDOW] = 0
    retry = _retry(ks, ctr, sstate, p)
    if retry != _OK:
        return retry
    f = ks[K_WFRAME]
    spte[p] = f
    sflags[p] = S_WRITABLE if pflags[key] & P_WRITE and fkey[f] >= 0 else 0
    saccessed[p] = 0
    ks[K_SEQ] = -1
    ks[K_RETRIES] = 0
    if pte[key] != f:  # the retry rule let a stale frame in: report it the moment it happens
        ks[K_VICTIM] = p
        return _ASK - STALE_INSTALL
    if sstate[FAULT_BLOCK] > 1:  # the driver maps the block around it
        ks[K_VICTIM] = p
        return _ASK - FAULT_AROUND
    return _AGAIN


@kernel
def _window_reclaim(ks, key, base, subs, event, offset, spte, sflags, shadow, state, acc, changed, scratch, pte, pflags,
                    fkey, ftoken, fpin, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr):  # fmt: skip
    """``Simulation._race_window`` done in the kernel: kswapd reclaims the page the sleeping fault resolved, under
    a CLEAR invalidation its mm's subscribers hear through the compiled path. A pinned or shared frame stays."""
    ctr[C.RACE_WINDOWS] += 1
    f = pte[key]
    if f < 0 or fpin[f] > 0 or fkey[f] != key:
        return
    scratch[0] = f
    scratch[1] = key - base
    swap_out_pages(scratch[0:1], scratch[1:2], base, subs, offset, spte, sflags, shadow, state, acc, pte, pflags,
                   fkey, ftoken, fpin, node, lists, pb, bits, skey, stoken, sfree, sreg, ctr, changed,
                   event)  # fmt: skip
    ks[K_WRECLAIMS] += 1


@kernel(inline=True)
def _write_token(seq, ftoken, ptoken, f, key):
    """New content for a written page: the next token (never 0, which means never written)."""
    seq += 1
    token = np.uint32(seq & 0xFFFFFFFF)
    if token == 0:
        token = np.uint32(1)
    ftoken[f] = token
    ptoken[key] = token
    return seq


# The hit paths: the accesses from ``i`` that hit, up to ``stop`` or the first miss. One loop per kind of
# client keeps each loop small enough for the compiler to keep its state in registers; the miss, rare, is
# handled outside. Returns the index of the miss (or ``stop``), the new write sequence and the counts of
# huge-page accesses, remote accesses and their distance (accesses and writes follow from the index and
# the sequence). Every index is cast with ``U`` (no wrap-around check): each is known to be >= 0.
# The two loops' common tail (accessed and write bookkeeping, NUMA accounting) is written out in each:
# one shared inline helper for it measured 15% slower on the CPU loop.


@kernel
def _cpu_hits(pages, writes, i, stop, base, pte, pflags, fkey, ftoken, ptoken, fref, pb, distance, nid, ref,
              numa, seq):  # fmt: skip
    remote = dist = huge = 0
    while i < stop:
        p = pages[U(i)]
        w = writes[U(i)]
        key = U(base + p)
        f = pte[key]
        fl = pflags[key]
        if f < 0 or fl & (P_PROTNONE | P_DEVICE) or not fl & (P_WRITE if w else P_READ):
            break
        if w and fkey[U(f)] < 0:  # a write to a shared (KSM) frame copies it first
            break
        pflags[key] = fl | (P_YOUNG | P_DIRTY if w else P_YOUNG)
        huge += (fl & P_HUGE) != 0
        if ref:
            fref[U(f)] = 1
        if w:
            seq = _write_token(seq, ftoken, ptoken, U(f), key)
        if numa:
            fnode = pb[f >> PAGEBLOCK_SHIFT, PB_NODE]
            remote += fnode != nid
            dist += distance[nid, fnode]
        i += 1
    return i, seq, huge, remote, dist


@kernel
def _sec_hits(pages, writes, i, stop, base, mm, spte, sflags, saccessed, pte, pflags, mm_base, fkey, ftoken, ptoken,
              fref, pb, distance, nid, ref, numa, check_owner, seq, ctr, skey, stoken):  # fmt: skip
    remote = dist = huge = 0
    nframes = U(fkey.size)
    while i < stop:
        # Prefetch in three stages, each reading what the one before brought in: the entry of the access
        # 2 * AHEAD on; for the access AHEAD on, if its entry is missing, the PTE its fault will read; for
        # the access AHEAD / 2 on, if that PTE is a swap entry, the slot the swap-in will read. When the
        # guest is overcommitted, faults (swap-ins) are where the time goes, each a chain of DRAM misses.
        if i + 2 * AHEAD < stop:
            q = U(pages[U(i + 2 * AHEAD)])
            prefetch(spte, q)
            prefetch(sflags, q)
        if i + AHEAD < stop:
            q = U(pages[U(i + AHEAD)])
            if spte[q] < 0:
                prefetch(pte, U(base + q))
                prefetch(pflags, U(base + q))
        if i + AHEAD // 2 < stop:
            q = U(pages[U(i + AHEAD // 2)])
            if spte[q] < 0 and pte[U(base + q)] < PTE_NONE:
                prefetch(stoken, U(swap_slot(pte[U(base + q)])))
                prefetch(skey, U(swap_slot(pte[U(base + q)])))
        p = U(pages[U(i)])
        w = writes[U(i)]
        f = spte[p]
        sfl = sflags[p]
        if U(f) >= nframes or (w and not sfl & S_WRITABLE):  # no entry, or (the plugin's) no frame: a fault
            break
        key = base + pages[U(i)]
        if check_owner:  # does the entry's frame hold the page?
            owner = fkey[U(f)]
            if owner != key and not (owner <= SHARED and pte[U(key)] == f):
                other = owner != ORPHAN and np.searchsorted(mm_base, owner, side="right") - 1 != mm
                if owner == FREE or other:
                    ctr[C.ISOLATION_VIOLATIONS] += 1
                else:
                    ctr[C.COHERENCE_VIOLATIONS] += 1
                if w:  # what the access did: a write lands in whatever the frame now holds
                    ctr[C.STALE_WRITES] += 1
                    ctr[C.FOREIGN_WRITES] += owner >= 0 and other
                else:
                    ctr[C.STALE_READS] += 1
        if not sfl & S_ACCESSED:  # (the shadow is set with it: only the framework writes it)
            sflags[p] = sfl | S_ACCESSED
            saccessed[p] |= SH_ACCESSED
        huge += (sfl & S_HUGE) != 0
        if ref:
            fref[U(f)] = 1
        if w:
            pflags[U(key)] |= P_DIRTY
            seq = _write_token(seq, ftoken, ptoken, U(f), U(key))
        if numa:
            fnode = pb[f >> PAGEBLOCK_SHIFT, PB_NODE]
            remote += fnode != nid
            dist += distance[nid, fnode]
        i += 1
    return i, seq, huge, remote, dist


@kernel
def run_accesses(pages, writes, ks, ctr, mm, spte, sflags, saccessed, sstate, vcpu_node, exact, check_owner,
                 chain_subs, chain_fast, window_event, numa_last, numa_stats, numa_event, pool_offset, pool_spte,
                 pool_sflags, pool_shadow, pool_state, pool_acc, changed, scratch, pte, pflags, ptoken, mm_base,
                 mm_flags, fkey, ftoken, fpin, fref, pb, bits, lists, node, node_order, distance, reg, hints, skey,
                 stoken, sfree, sreg):  # fmt: skip
    """Run accesses ``pages[ks[K_I]:]`` of mm ``mm``; return DONE or what Python must do first.

    ``spte``/``sflags``/``saccessed``/``sstate`` are the secondary MMU the accesses go through, or empty arrays for
    CPU accesses. ``vcpu_node[v]`` is the node of accessor ``v``; the batch is split evenly among them.
    ``check_owner``: check on every access through a secondary that its frame holds the page (a dependent load per
    access; the invariant check finds every bad entry each tick without it).

    ``chain_subs`` are the mm's subscribers and ``chain_fast`` whether the compiled path serves every one
    (``mmnsim.fastpath``). Then the kernel runs a race window's reclaim itself, as kswapd would
    (``_window_reclaim``, recording ``window_event`` as the pages' last change, counted in ``ks[K_WRECLAIMS]``),
    and a hinting fault's migration (``mmnsim.numafaults``, when ``numa_last`` is not empty: a policy asked for
    NUMA balancing; recording ``numa_event``); otherwise a window returns RACE_WINDOW and a migration
    NUMA_MIGRATE, and Python does them. The ``pool_*`` arrays are the run's secondary tables
    (``mmnsim.sectables``); ``scratch`` is two int64 of room. The rest are the host's arrays, unpacked (numba
    types a tuple of arrays field by field on every call: tens of microseconds)."""
    n = pages.size
    base = mm_base[mm]
    nv = vcpu_node.size
    via_sec = spte.size > 0
    ks[K_EXACT] = exact
    visible = exact and (not via_sec or (sstate[MODE] & SEC_YOUNG) != 0)
    numa = node.shape[0] > 1
    # The counters live in locals, written back on the way out: a counter kept in ``ctr`` would be
    # reloaded after every store to another array, since numba cannot rule out aliasing.
    accesses = remote = dist = huge = 0
    seq = seq0 = ctr[C.WRITE_SEQ]
    i = ks[K_I]
    v_end = 0  # the accessor of accesses [.., v_end): accessor v issues [v * n // nv, ...)
    nid = vcpu_node[0]
    status = DONE
    # For CLOCK, the access that brought a page in is the miss, not a reference: it leaves the bit clear.
    fresh = visible and ks[K_FRESH] != 0
    if ks[K_SKIP]:
        ks[K_SKIP] = 0
        ks[K_SEQ] = -1
        ks[K_LEVEL] = 0
        i += 1
    while i < n:
        if i >= v_end:
            v = (i * nv) // n
            v_end = -((-(v + 1) * n) // nv)
            nid = vcpu_node[v]
        stop = i + 1 if fresh else min(n, v_end)
        ref = visible and not fresh
        # ``numa`` is passed as a constant so that each loop is compiled with or without its NUMA
        # accounting: the code alone, even never run, costs registers the loop needs.
        if via_sec and numa:
            j, seq, h, r, d = _sec_hits(pages, writes, i, stop, base, mm, spte, sflags, saccessed, pte, pflags, mm_base,
                                              fkey, ftoken, ptoken, fref, pb, distance, nid, ref, True,
                                              check_owner, seq, ctr, skey, stoken)  # fmt: skip
        elif via_sec:
            j, seq, h, r, d = _sec_hits(pages, writes, i, stop, base, mm, spte, sflags, saccessed, pte, pflags, mm_base,
                                              fkey, ftoken, ptoken, fref, pb, distance, nid, ref, False,
                                              check_owner, seq, ctr, skey, stoken)  # fmt: skip
        elif numa:
            j, seq, h, r, d = _cpu_hits(pages, writes, i, stop, base, pte, pflags, fkey, ftoken, ptoken, fref,
                                              pb, distance, nid, ref, True, seq)  # fmt: skip
        else:
            j, seq, h, r, d = _cpu_hits(pages, writes, i, stop, base, pte, pflags, fkey, ftoken, ptoken, fref,
                                              pb, distance, nid, ref, False, seq)  # fmt: skip
        accesses += j - i
        remote += r
        dist += d
        huge += h
        if j > i:
            fresh = False
        i = j
        if i == stop:
            continue
        # A miss: fault, then try the access again.
        st = _miss(ks, ctr, sstate, spte, sflags, saccessed, pte, pflags, ptoken, mm_base, mm_flags, fkey, ftoken,
                   fpin, fref, pb, bits, lists, node, node_order, reg, skey, stoken, sfree, sreg, base + pages[i],
                   pages[i], writes[i], nid)  # fmt: skip
        if st == _AGAIN:
            fresh = visible and (fresh or ks[K_FRESH] != 0)
            ks[K_FRESH] = 0
            continue
        if st == _NEXT:
            i += 1
            continue
        status = _ASK - st
        if status == RACE_WINDOW and chain_fast and chain_subs.size:  # the host runs while the fault sleeps
            _window_reclaim(ks, ks[K_VICTIM], base, chain_subs, window_event, pool_offset, pool_spte, pool_sflags,
                            pool_shadow, pool_state, pool_acc, changed, scratch, pte, pflags, fkey, ftoken, fpin,
                            node, lists, pb, bits, skey, stoken, sfree, sreg, ctr)  # fmt: skip
            status = DONE
            continue  # the fault resumes: _after_window decides whether it retries
        if status == NUMA_HINT:
            key = ks[K_VICTIM]
            if reg[REG_HINTS] < hints.shape[0]:  # every hinting fault, local too, for any policy that looks
                hints[reg[REG_HINTS], 0] = key
                hints[reg[REG_HINTS], 1] = nid
                reg[REG_HINTS] += 1
            status = DONE
            if numa_last.size:  # NUMA balancing decides in the fault, and migrates there
                f = pte[key]
                target = numa_target(numa_last, numa_stats, mm, key, pb[f >> PAGEBLOCK_SHIFT, PB_NODE], nid)
                if target >= 0 and chain_fast and not pflags[key] & P_HUGE:
                    migrate_in_fault(key, base, target, mm, chain_subs, pool_offset, pool_spte, pool_sflags,
                                     pool_shadow, pool_state, pool_acc, pte, fkey, ftoken, fpin, fref, node, lists,
                                     pb, bits, ctr, changed, numa_event, numa_stats, scratch)  # fmt: skip
                elif target >= 0:
                    ks[K_FRAME] = target
                    status = NUMA_MIGRATE
                    break
            continue  # the access again: the protection is back (or the page moved), a secondary fault retries
        break
    ks[K_I] = i
    ks[K_FRESH] = fresh
    ctr[C.ACCESSES] += accesses
    ctr[C.WRITES] += seq - seq0  # one step of the sequence per write
    ctr[C.REMOTE_ACCESSES] += remote
    ctr[C.ACCESS_DISTANCE] += dist
    ctr[C.HUGE_ACCESSES] += huge
    ctr[C.WRITE_SEQ] = seq
    return status
