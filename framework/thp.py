"""Transparent huge pages: splitting a THP back into 4 KiB mappings, and collapsing a 2 MiB region into one.

A THP is an aligned 2 MiB region of an mm (``HUGE_PAGES`` pages) mapped by the 512 frames of one pageblock,
in order, each PTE flagged ``P_HUGE`` (the PMD mapping). It is allocated whole at fault time (the access
kernel's ``huge_fault``, when ``host.thp`` is ``always`` and a free pageblock exists), or built by
``collapse`` (khugepaged). Anything that handles pages one at a time (reclaim, migration, a partial
munmap or mprotect) splits it first; a split, like a collapse, raises an invalidation (event CLEAR) over
the 2 MiB range, so a secondary MMU's 2 MiB entry goes and the device maps the region again at 4 KiB.
"""

from typing import TYPE_CHECKING

import numpy as np

from . import counters as C
from .arguments import OperationError, mm_arg, page_arg, pages_arg
from .frames import NFREE, WMARK_LOW, alloc_pageblock, free_frame
from .kernel import kernel
from .notifier import Event, NotifierRange
from .pagebits import HUGE_PAGES, P_DEVICE, P_HUGE, P_PROTNONE, P_YOUNG, PTE_NONE

if TYPE_CHECKING:
    from .mm import MM
    from .simulation import Simulation


def split(sim: "Simulation", mm: "MM", pages: np.ndarray) -> int:
    """Split every THP that maps one of ``pages`` (mm page numbers, known to be inside the mm: the framework's
    own callers; a plugin calls ``split_huge_pages``); return how many were split."""
    pages = np.asarray(pages, dtype=np.int64)
    huge = pages[(mm.flags[pages] & P_HUGE) != 0]
    if huge.size == 0:
        return 0
    firsts = np.unique(huge & ~(HUGE_PAGES - 1))
    ranges = NotifierRange(mm, firsts, firsts + HUGE_PAGES, Event.CLEAR)

    def demote() -> None:
        fref = sim.host._ft.ref
        for first in firsts:
            mm._flags[first : first + HUGE_PAGES] &= np.uint8(0xFF ^ P_HUGE)
            head = int(mm.pte[first])  # the pages keep the folio's LRU flags (__split_folio_to_order copies them)
            fref[head : head + HUGE_PAGES] = fref[head]

    mm.invalidate(ranges, demote)
    sim.host._ctr[C.THP_SPLIT] += firsts.size
    return int(firsts.size)


def split_huge_pages(sim: "Simulation", mm: "MM", pages: np.ndarray) -> int:
    """Split every THP that maps one of ``pages`` of ``mm`` (page numbers inside it); return how many were split.
    Each split raises CLEAR over its 2 MiB."""
    mm = mm_arg(sim, mm, "split_huge_pages")
    return split(sim, mm, pages_arg(pages, mm.npages, "split_huge_pages"))


def split_straddling(sim: "Simulation", mm: "MM", start: int, end: int) -> None:
    """Split the THPs that [start, end) covers only partly (a partial munmap or mprotect)."""
    edges = [start] if start % HUGE_PAGES else []  # a THP begins before the range
    if end % HUGE_PAGES:  # one ends after it (also for a one-page range on a 2 MiB boundary)
        edges.append(end - 1)
    if edges:
        split(sim, mm, np.array(edges))


@kernel
def _collapse(pt, ft, ctr, first, node_id):
    """Copy the pages of the aligned region at key ``first`` into a new pageblock on node ``node_id`` and
    map it as a THP; free the old frames. Returns False if the node has no free pageblock."""
    pte, pflags, ptoken = pt.pte, pt.flags, pt.token
    fkey, ftoken, fref, node, lists, pb, bits = ft.key, ft.token, ft.ref, ft.node, ft.lists, ft.pb, ft.bits
    if node[node_id, NFREE] - HUGE_PAGES <= node[node_id, WMARK_LOW]:
        return False
    for i in range(HUGE_PAGES):  # a swapped-out, pinned, shared (KSM) or device-private page cannot be collapsed
        old = pte[first + i]
        if old < PTE_NONE or (old >= 0 and (ft.pin[old] > 0 or fkey[old] < 0 or pflags[first + i] & P_DEVICE)):
            return False
    block = alloc_pageblock(node, lists, pb, bits, fkey, fref, node_id, first)
    if block < 0:
        return False
    for i in range(HUGE_PAGES):
        key = first + i
        old = pte[key]
        ftoken[block + i] = ptoken[key] if old != PTE_NONE else 0
        if old >= 0:
            free_frame(node, lists, pb, bits, fkey, ftoken, old)
        pte[key] = block + i
        pflags[key] = (pflags[key] & ~P_PROTNONE) | P_HUGE | P_YOUNG  # the new PMD takes the VMA's protection
    ctr[C.THP_COLLAPSE_ALLOC] += 1
    return True


def collapse(sim: "Simulation", mm: "MM", first: int, node: int) -> bool:
    """khugepaged's collapse_huge_page of the region starting at page ``first``: invalidate the 2 MiB range
    (event CLEAR), copy the present pages into a fresh pageblock (absent ones zero-filled) and map it by
    PMD. The caller has checked the region qualifies (as the defrag policy's khugepaged does; the collapse
    itself refuses a region holding swapped-out, pinned, shared or device-private pages). Returns False if
    ``node`` had no free pageblock. ``first`` must start an aligned 2 MiB region inside ``mm``; ``node`` is
    a RAM node."""
    mm = mm_arg(sim, mm, "collapse_huge_page")
    first = page_arg(first, mm.npages, "collapse_huge_page", "first")
    if first % HUGE_PAGES or first + HUGE_PAGES > mm.npages:
        raise OperationError(f"collapse_huge_page: first must start an aligned 2 MiB region ({HUGE_PAGES} pages) "
                             f"inside mm '{mm.name}' ({mm.npages} pages), got {first}")  # fmt: skip
    node = sim.host._node(node, "collapse_huge_page", ram=True)
    ok = False

    def build() -> None:
        nonlocal ok
        ok = _collapse(sim.host._pt, sim.host._ft, sim.host._ctr, mm.base + first, node)

    ranges = NotifierRange(mm, np.array([first]), np.array([first + HUGE_PAGES]), Event.CLEAR)
    mm.invalidate(ranges, build)
    return ok
