"""An address space (``struct mm_struct``): its slice of the primary page table, its notifier chain, and
the operations that raise notifier events.

Each operation follows the kernel's order: ``invalidate_range_start`` while the PTEs still map the pages,
then the PTE change (and the CPU TLB flush, with ``arch_invalidate_secondary_tlbs``), then
``invalidate_range_end`` after the pages are freed.
"""

from typing import TYPE_CHECKING

import numpy as np

from .frames import ORPHAN, SHARED, free_frame
from .kernel import kernel
from .notifier import Event, NotifierChain, NotifierRange, single_pages
from .pagebits import (
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
from .pagetable import MM_EXITED
from .share import drop_share
from .swapdev import swap_free
from .thp import split, split_straddling

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
        swap_free(sw.key, sw.token, sw.reg, swap_slot(e))
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
        pt = sim.host.pt
        self.base = int(pt.mm_base[index])
        self.pte = pt.pte[self.base : self.base + npages]
        self.flags = pt.flags[self.base : self.base + npages]
        self.token = pt.token[self.base : self.base + npages]
        self.chain = NotifierChain(self)

    def __repr__(self) -> str:
        return f"MM({self.name!r}, {self.npages} pages)"

    @property
    def exited(self) -> bool:
        return bool(self.sim.host.pt.mm_flags[self.index] & MM_EXITED)

    def set_flag(self, bit: int, on: bool) -> None:
        flags = self.sim.host.pt.mm_flags
        flags[self.index] = flags[self.index] | bit if on else flags[self.index] & ~bit

    def check_range(self, start: int, end: int) -> None:
        if not (0 <= start < end <= self.npages):
            raise ValueError(
                f"range [{start}, {end}) is not inside mm '{self.name}' (pages 0..{self.npages}); "
                "a range needs 0 <= start < end <= npages"
            )

    # -- operations --

    def mmap(self, start: int, end: int, prot: str = "rw") -> None:
        """Create an anonymous mapping over [start, end): no pages yet, faulted in on first touch."""
        self.check_range(start, end)
        self.flags[start:end] = P_VMA | _prot_bits(prot)

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
        pages = np.unique(np.asarray(pages, dtype=np.int64))
        split(self.sim, self, pages)
        host = self.sim.host
        dropped = 0

        def change() -> None:
            nonlocal dropped
            dropped = zap_keys(host.pt, host.ft, host.sw, self.base + pages)

        self.invalidate(single_pages(self, pages, Event.CLEAR), change)
        return dropped

    def mprotect(self, start: int, end: int, prot: str) -> None:
        """Change the mapping's protection ('none', 'r', 'rw'); secondaries are told (PROTECTION_VMA)."""
        self.check_range(start, end)
        bits = _prot_bits(prot)
        if np.any((self.flags[start:end] & P_VMA) == 0):
            raise ValueError(f"mprotect [{start}, {end}) of mm '{self.name}' covers unmapped pages")
        split_straddling(self.sim, self, start, end)

        def change() -> None:
            self.flags[start:end] = (self.flags[start:end] & clear_mask(P_READ | P_WRITE)) | bits

        self.invalidate(NotifierRange(self, np.array([start]), np.array([end]), Event.PROTECTION_VMA), change)

    def oom_reap(self) -> int | None:
        """__oom_reap_task_mm: unmap the whole (anonymous) mapping under a non-blockable UNMAP invalidation,
        keeping the VMA. Returns the pages reaped, or None when a subscriber refused (nothing was done)."""
        host = self.sim.host
        dropped = 0

        def change() -> None:
            nonlocal dropped
            dropped = zap_ptes(host.pt, host.ft, host.sw, self.base, self.base + self.npages)

        whole = NotifierRange(self, np.array([0]), np.array([self.npages]), Event.UNMAP, blockable=False)
        return dropped if self.invalidate(whole, change) else None

    def exit(self) -> None:
        """exit_mmap: release the notifier chain, unmap everything, then let device owners tear down."""
        if self.exited:
            return
        self.chain.release()
        self._zap(0, self.npages, Event.UNMAP, keep_vma=False)
        for sec in self.sim.secondaries_of(self):
            sec.teardown()
        self.set_flag(MM_EXITED, True)

    # -- the invalidation protocol --

    def invalidate(self, ranges: NotifierRange, change) -> bool:
        """Run ``change()`` (the PTE update) inside invalidate_range_start/end on this mm's chain.

        Returns False, without running ``change``, if a subscriber refused a non-blockable batch.
        """
        if not self.chain:
            change()
            return True
        if not self.chain.invalidate_range_start(ranges):
            return False
        change()
        self.chain.call("arch_invalidate_secondary_tlbs", mm=self, start=ranges.start, end=ranges.end)
        self.chain.invalidate_range_end(ranges)
        return True

    def _zap(self, start: int, end: int, event: Event, keep_vma: bool) -> int:
        self.check_range(start, end)
        split_straddling(self.sim, self, start, end)
        host = self.sim.host
        dropped = 0

        def change() -> None:
            nonlocal dropped
            dropped = zap_ptes(host.pt, host.ft, host.sw, self.base + start, self.base + end)
            if not keep_vma:
                self.flags[start:end] = 0

        self.invalidate(NotifierRange(self, np.array([start]), np.array([end]), event), change)
        return dropped


def _prot_bits(prot: str) -> int:
    try:
        return PROT[prot]
    except KeyError:
        raise ValueError(f"unknown protection {prot!r}; accepted: {', '.join(PROT)}") from None
