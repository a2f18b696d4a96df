"""An address space (``struct mm_struct``): its slice of the primary page table, its notifier chain, and
the operations that raise notifier events.

Each operation follows the kernel's order: ``invalidate_range_start`` while the PTEs still map the pages,
then the PTE change (and the CPU TLB flush, with ``arch_invalidate_secondary_tlbs``), then
``invalidate_range_end`` after the pages are freed.
"""

from typing import TYPE_CHECKING

import numpy as np

from .arguments import OperationError, pages_arg, range_arg
from .frames import ORPHAN, SHARED, free_frame
from .kernel import kernel
from .notifier import (
    Event,
    NotifierChain,
    NotifierRange,
    component_label,
    expand_ranges,
    guarded,
    ranges_of,
    single_pages,
)
from .pagebits import (
    HUGE_PAGES,
    P_DEVICE,
    P_DIRTY,
    P_HUGE,
    P_PROTNONE,
    P_READ,
    P_VMA,
    P_WRITE,
    P_YOUNG,
    PTE_NONE,
    clear_mask,
    swap_slot,
)
from .pagetable import MM_EXITED, MM_HUGEPAGE, read_only
from .share import drop_share
from .swapdev import swap_free
from .thp import split, split_straddling
from .workingset import MMCounters, mm_counters

if TYPE_CHECKING:
    from .simulation import Simulation

PROT = {"none": 0, "r": P_READ, "rw": P_READ | P_WRITE}
_PTE_BITS = P_YOUNG | P_DIRTY | P_PROTNONE | P_HUGE | P_DEVICE


@kernel
def zap_ptes(pt, ft, sw, lo, hi):
    """Drop the pages of keys [lo, hi): free their frames (a pinned frame becomes an orphan that its
    pin keeps alive; a shared frame loses one sharer) and swap slots, and reset their content to zero.
    Returns pages dropped."""
    dropped = 0
    for key in range(lo, hi):
        dropped += _zap_key(pt, ft, sw, key)
    return dropped


@kernel
def zap_keys(pt, ft, sw, keys):
    """``zap_ptes`` for the given keys."""
    dropped = 0
    for key in keys:
        dropped += _zap_key(pt, ft, sw, key)
    return dropped


@kernel(inline=True)
def _zap_key(pt, ft, sw, key):
    e = pt.pte[key]
    if e >= 0:
        if ft.key[e] <= SHARED:
            drop_share(ft, e)
        elif ft.pin[e] > 0:
            ft.key[e] = ORPHAN
        else:
            free_frame(ft.node, ft.lists, ft.pb, ft.bits, ft.key, ft.token, e)
    elif e != PTE_NONE:
        swap_free(sw.key, sw.token, sw.free, sw.reg, swap_slot(e))
    pt.pte[key] = PTE_NONE
    pt.token[key] = 0
    pt.flags[key] &= ~_PTE_BITS
    return e != PTE_NONE


class MM:
    """One process's address space: pages ``[0, npages)`` of the global page table."""

    def __init__(self, sim: "Simulation", index: int, name: str, npages: int):
        self.sim = sim
        self.index = index
        self.name = name
        self.npages = npages
        pt = sim.host._pt
        self.base = int(pt.mm_base[index])
        # The framework's writable slices, and the read-only views everyone else reads (plugins change
        # an mm's pages only through its operations, which raise the notifiers).
        self._pte = pt.pte[self.base : self.base + npages]
        self._flags = pt.flags[self.base : self.base + npages]
        self._token = pt.token[self.base : self.base + npages]
        self.pte, self.flags, self.token = (read_only(a) for a in (self._pte, self._flags, self._token))
        self.chain = NotifierChain(self)

    def __repr__(self) -> str:
        return f"MM({self.name!r}, {self.npages} pages)"

    @property
    def exited(self) -> bool:
        return bool(self.sim.host._pt.mm_flags[self.index] & MM_EXITED)

    @property
    def hugepage(self) -> bool:
        """Whether its memory is MADV_HUGEPAGE (a guest's: QEMU madvises guest RAM)."""
        return bool(self.sim.host.pt.mm_flags[self.index] & MM_HUGEPAGE)

    def counters(self) -> MMCounters:
        """Its counters now: resident, swapped and pinned pages, and the minor faults and refaults (major faults:
        pages read back from swap) its accesses took so far; an ``mmnsim.MMCounters``. Per tenant:
        ``tenant.mm.counters()``; per tick: the difference of two calls."""
        return mm_counters(self.sim, self)

    def _set_flag(self, bit: int, on: bool) -> None:
        flags = self.sim.host._pt.mm_flags
        flags[self.index] = flags[self.index] | bit if on else flags[self.index] & ~bit

    def check_range(self, start: int, end: int, op: str = "range") -> tuple[int, int]:
        """[start, end) as ints, if inside the mm and holding a page; else OperationError."""
        return range_arg(start, end, self.npages, f"{op} of mm '{self.name}'")

    # -- operations --

    def mmap(self, start: int, end: int, prot: str = "rw") -> None:
        """Create an anonymous mapping over [start, end): no pages yet, faulted in on first touch. What was
        mapped there before is unmapped first (MAP_FIXED: mmap_region unmaps the overlap, with UNMAP)."""
        start, end = self.check_range(start, end, "mmap")
        bits = _prot_bits(prot, f"mmap of mm '{self.name}'")
        if (self.flags[start:end] & P_VMA).any():
            self.munmap(start, end)
        self._flags[start:end] = P_VMA | bits

    def access(self, pages: np.ndarray, writes: np.ndarray | None = None) -> None:
        """CPU accesses by the process itself (through the primary table only)."""
        self.sim.run_client(self, None, pages, writes)

    def munmap(self, start: int, end: int) -> int:
        """Unmap [start, end): secondaries are told (UNMAP), pages and swap slots are freed."""
        return self._zap(start, end, Event.UNMAP, keep_vma=False)

    def madvise_dontneed(self, start: int, end: int) -> int:
        """MADV_DONTNEED: drop the pages (CLEAR); the mapping stays and refaults zero-filled."""
        return self._zap(start, end, Event.CLEAR, keep_vma=True)

    def discard(self, pages: np.ndarray) -> int:
        """MADV_DONTNEED of scattered single pages (a page cache dropping pages here and there)."""
        pages = np.unique(pages_arg(pages, self.npages, f"discard of mm '{self.name}'"))
        if pages.size == 0:
            return 0
        split(self.sim, self, pages)
        host = self.sim.host
        dropped = 0

        def change() -> None:
            nonlocal dropped
            dropped = zap_keys(host._pt, host._ft, host._sw, self.base + pages)

        with self.sim.actors.acting(f"discard of {pages.size} pages of mm '{self.name}'"):
            self.invalidate(single_pages(self, pages, Event.CLEAR), change)
        return dropped

    def mprotect(self, start: int, end: int, prot: str) -> None:
        """Change the mapping's protection ('none', 'r', 'rw'); secondaries are told (PROTECTION_VMA)."""
        start, end = self.check_range(start, end, "mprotect")
        bits = _prot_bits(prot, f"mprotect of mm '{self.name}'")
        if np.any((self.flags[start:end] & P_VMA) == 0):
            raise ValueError(f"mprotect [{start}, {end}) of mm '{self.name}' covers unmapped pages")
        split_straddling(self.sim, self, start, end)

        def change() -> None:
            self._flags[start:end] = (self._flags[start:end] & clear_mask(P_READ | P_WRITE)) | bits

        with self.sim.actors.acting(f"mprotect({start}, {end}, {prot!r}) of mm '{self.name}'"):
            self.invalidate(NotifierRange(self, np.array([start]), np.array([end]), Event.PROTECTION_VMA), change)

    def mkclean(self, pages: np.ndarray) -> int:
        """Write-protect and clean each of ``pages`` for writeback: folio_mkclean's page_vma_mkclean_one
        (mm/rmap.c; page_mkclean_one before 6.3) under a PROTECTION_PAGE invalidation per folio (one range a
        page, or the 2 MiB of a THP), so that every secondary MMU drops its entry, write permission with it,
        and a later write through it faults again. Each present page in RAM loses its dirty bit (a swapped-out
        or device-private page has no PTE to clean). Returns the pages that were dirty.

        Simplified: the primary PTE keeps its write permission (the page table has no bit for a write-protected
        PTE in a writable VMA: all eight flag bits are in use), so the CPU's next write sets the dirty bit again
        without the write fault (do_wp_page, wp_page_reuse) the kernel would take; a secondary MMU's next
        write does fault, its entry being gone."""
        pages = pages_arg(pages, self.npages, f"mkclean of mm '{self.name}'")
        pages = pages[(self._pte[pages] >= 0) & ((self._flags[pages] & P_DEVICE) == 0)]
        if pages.size == 0:
            return 0
        huge = (self._flags[pages] & P_HUGE) != 0
        start = np.unique(np.where(huge, pages & ~(HUGE_PAGES - 1), pages))  # a THP is cleaned as one folio
        end = np.where((self._flags[start] & P_HUGE) != 0, start + HUGE_PAGES, start + 1)  # (a THP is whole)
        cleaned = 0

        def clean() -> None:
            nonlocal cleaned
            keys = self.base + expand_ranges(start, end)
            present = keys[self.sim.host._pt.pte[keys] >= 0]
            cleaned = int(np.count_nonzero(self.sim.host._pt.flags[present] & P_DIRTY))
            self.sim.host._pt.flags[present] &= clear_mask(P_DIRTY)

        with self.sim.actors.acting(f"mkclean of {start.size} folios of mm '{self.name}'"):
            self.invalidate(NotifierRange(self, start, end, Event.PROTECTION_PAGE), clean)
        return cleaned

    def clear_soft_dirty(self) -> int:
        """``echo 4 > /proc/PID/clear_refs``: clear_refs_write with CLEAR_REFS_SOFT_DIRTY (fs/proc/task_mmu.c)
        raises one SOFT_DIRTY invalidation over the whole mm, then write-protects every present page and
        clears its soft-dirty bit (clear_soft_dirty), leaving alone a page that may be DMA-pinned
        (pte_is_pinned), so that the next write to each page is seen. Returns the pages write-protected.

        Simplified: the model keeps one dirty bit per page, which stands for soft-dirty here: the pages
        write-protected lose ``P_DIRTY``, and a write sets it again (the CPU's without the write fault the
        kernel takes, as in ``mkclean``; a secondary MMU's through a new fault, its entry being gone)."""
        if self.exited:
            return 0
        protected = 0

        def clear() -> None:
            nonlocal protected
            host = self.sim.host
            pte, flags = self._pte, self._flags
            target = (pte >= 0) & ((flags & P_DEVICE) == 0)
            target[target] = host._ft.pin[pte[target]] == 0
            protected = int(np.count_nonzero(target))
            flags[target] &= clear_mask(P_DIRTY)

        whole = NotifierRange(self, np.array([0]), np.array([self.npages]), Event.SOFT_DIRTY)
        with self.sim.actors.acting(f"clear_soft_dirty of mm '{self.name}'"):
            self.invalidate(whole, clear)
        return protected

    def change_prot_numa(self, start: int, end: int, skip_pinned: bool) -> int:
        """NUMA balancing's change_prot_numa over [start, end): make every present page in RAM a PROT_NONE
        hinting entry (the next access takes a NUMA hinting fault), under a PROTECTION_VMA invalidation;
        a THP the range covers in part is split first (change_pmd_range). ``skip_pinned``: leave pinned
        pages alone (the kernel skips pages maybe DMA-pinned since 5.19). Returns the PTEs changed."""
        start, end = self.check_range(start, end, "change_prot_numa")
        with self.sim.actors.acting(f"change_prot_numa({start}, {end}) of mm '{self.name}'"):
            split_straddling(self.sim, self, start, end)
            pte, flags = self._pte[start:end], self._flags[start:end]
            target = (pte >= 0) & ((flags & (P_PROTNONE | P_DEVICE)) == 0)
            if skip_pinned:
                target &= self.sim.host._ft.pin[np.maximum(pte, 0)] == 0

            def protect() -> None:
                flags[target] |= P_PROTNONE

            self.invalidate(NotifierRange(self, np.array([start]), np.array([end]), Event.PROTECTION_VMA), protect)
        return int(np.count_nonzero(target))

    def oom_reap(self) -> int | None:
        """__oom_reap_task_mm: unmap the whole (anonymous) mapping under a non-blockable UNMAP invalidation,
        keeping the VMA. Returns the pages reaped, or None when a subscriber refused (nothing was done)."""
        host = self.sim.host
        dropped = 0

        def change() -> None:
            nonlocal dropped
            dropped = zap_ptes(host._pt, host._ft, host._sw, self.base, self.base + self.npages)

        whole = NotifierRange(self, np.array([0]), np.array([self.npages]), Event.UNMAP, blockable=False)
        with self.sim.actors.acting(f"the OOM reaper on mm '{self.name}'"):
            return dropped if self.invalidate(whole, change) else None

    def exit(self) -> None:
        """exit_mmap: release the notifier chain, unmap everything, then let device owners tear down."""
        if self.exited:
            return
        with self.sim.actors.acting(f"exit of mm '{self.name}'"):
            self._exit()

    def _exit(self) -> None:
        self.chain.release()
        self._zap(0, self.npages, Event.UNMAP, keep_vma=False)
        for sec in self.sim.secondaries_of(self):
            guarded(self.sim.actors.running, component_label(sec), "teardown", sec.teardown)
        self._set_flag(MM_EXITED, True)

    # -- the invalidation protocol --

    def invalidate(self, ranges: NotifierRange, change) -> bool:
        """Run ``change()`` (the PTE update) inside invalidate_range_start/end on this mm's chain.

        Returns False, without running ``change``, if a subscriber refused a non-blockable batch.
        """
        ranges_of(ranges, self, "invalidate")
        if not callable(change):
            raise OperationError(f"invalidate of mm '{self.name}': change must be a callable, got {change!r}")
        record = self.sim.actors.record
        if not self.chain:
            change()
            record(self.base, ranges.start, ranges.end, f"{ranges.event.name} of mm '{self.name}'", self.sim.tick)
            return True
        if not self.chain.invalidate_range_start(ranges):
            return False
        change()
        record(self.base, ranges.start, ranges.end, f"{ranges.event.name} of mm '{self.name}'", self.sim.tick)
        self.chain.call("arch_invalidate_secondary_tlbs", mm=self, start=ranges.start, end=ranges.end)
        self.chain.invalidate_range_end(ranges)
        return True

    def invalidate_pages(self, pages: np.ndarray, event: Event, change, owner: object | None = None) -> bool:
        """Run ``change()`` for a batch of single pages unmapped one by one, as try_to_unmap_one (mm/rmap.c)
        does for reclaim and migration: a start/end batch of one-page ranges, or under ``kernel=2008``
        (``kernel.invalidate_page``) the 2.6.27 ``invalidate_page`` op, page by page, with no bracket.
        Device migration (MIGRATE, migrate_vma_*) always brackets. Returns False if a subscriber refused."""
        pages = pages_arg(pages, self.npages, f"invalidate_pages of mm '{self.name}'")
        if not isinstance(event, Event):
            event = _event(event)
        if not callable(change):
            raise OperationError(f"invalidate_pages of mm '{self.name}': change must be a callable, got {change!r}")
        if owner is not None and not any(owner is s for s in self.sim.secondaries):
            raise OperationError(f"invalidate_pages of mm '{self.name}': owner must be None or one of "
                                 f"sim.secondaries, got {owner!r}")  # fmt: skip
        return self._invalidate_pages(pages, event, change, owner) if pages.size else True

    def _invalidate_pages(self, pages: np.ndarray, event: Event, change, owner: object | None = None) -> bool:
        """``invalidate_pages`` for the framework's own callers (reclaim, migration, compaction), whose pages
        are known to be inside the mm: no second check on their path."""
        if self.sim.kernel.invalidate_page and event is not Event.MIGRATE:
            if self.chain:
                self.chain.invalidate_page(pages, event)
            change()
            self.sim.actors.record(self.base, pages, pages + 1, f"{event.name} of mm '{self.name}'", self.sim.tick)
            return True
        return self.invalidate(single_pages(self, pages, event, owner=owner), change)

    def _zap(self, start: int, end: int, event: Event, keep_vma: bool) -> int:
        op = "munmap" if event == Event.UNMAP else "madvise_dontneed"
        start, end = self.check_range(start, end, op)
        split_straddling(self.sim, self, start, end)
        host = self.sim.host
        dropped = 0

        def change() -> None:
            nonlocal dropped
            dropped = zap_ptes(host._pt, host._ft, host._sw, self.base + start, self.base + end)
            if not keep_vma:
                self._flags[start:end] = 0

        with self.sim.actors.acting(f"{op}({start}, {end}) of mm '{self.name}'"):
            self.invalidate(NotifierRange(self, np.array([start]), np.array([end]), event), change)
        return dropped


def _event(event: object) -> Event:
    try:
        return Event(event)
    except (ValueError, TypeError):
        accepted = ", ".join(e.name for e in Event)
        raise OperationError(f"invalidate_pages: unknown notifier event {event!r}; accepted: {accepted}") from None


def _prot_bits(prot: str, op: str) -> int:
    try:
        return PROT[prot]
    except (KeyError, TypeError):
        raise OperationError(f"{op}: unknown protection {prot!r}; accepted: {', '.join(PROT)}") from None
