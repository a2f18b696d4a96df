"""Page migration (mm/migrate.c): move pages of an mm to frames on another node, RAM or device memory.

The building block of NUMA balancing, compaction and device-private memory. For each batch, the
secondary MMUs are told first, then each page's content is copied to a new frame, its PTE repointed and
the old frame freed. The event and the ranges are the kernel's:

* a move between RAM nodes (NUMA balancing, compaction: migrate_pages -> try_to_migrate ->
  try_to_migrate_one in mm/rmap.c) raises CLEAR, one range per page (try_to_migrate_one initialises its
  mmu_notifier_range per folio), or under ``kernel=2008`` the per-page ``invalidate_page``;
* a move into or out of device-private memory (migrate_vma_setup -> migrate_vma_collect in
  mm/migrate_device.c) raises MIGRATE once per call over the whole range the driver asked for
  (mmu_notifier_range_init_owner over [start, end), then the page-table walk inside it), with the
  ``owner`` that asked (the pgmap owner), so a device migrating its own pages can skip the event. A driver
  calls migrate_vma_setup per contiguous virtual range: the model raises one MIGRATE range per run of
  consecutive pages asked for, every page of it covered, those that will not move included (the kernel
  collects, and then restores, them inside the same bracket).

A pinned page cannot move (the kernel's migration fails on a maybe-DMA-pinned folio) and is counted as
refused, as are a shared (KSM) page and a page for which the target has no free frame.
"""

from typing import TYPE_CHECKING

import numpy as np

from . import counters as C
from .arguments import OperationError, count_arg, mm_arg, pages_arg
from .frames import NFREE, PAGEBLOCK_SHIFT, PB_NODE, alloc_frame, free_frame
from .kernel import kernel
from .notifier import Event, page_runs
from .pagebits import P_DEVICE
from .thp import split

if TYPE_CHECKING:
    from .mm import MM
    from .simulation import Simulation


@kernel
def _movable(pte, fkey, fpin, pb, base, pages, target, out):
    """Which pages are present, unpinned, unshared and not already on ``target``; count the pinned and
    shared ones (a KSM page is not migrated here: a simplification, see ``mmnsim.share``)."""
    refused = 0
    for i in range(pages.size):
        e = pte[base + pages[i]]
        stuck = e >= 0 and (fpin[e] > 0 or fkey[e] < 0)
        out[i] = e >= 0 and not stuck and pb[e >> PAGEBLOCK_SHIFT, PB_NODE] != target
        refused += stuck
    return refused


@kernel
def _move(pt, ft, ctr, base, pages, target, keep_free, device):
    pte, pflags = pt.pte, pt.flags
    fkey, ftoken, fref, node, lists, pb, bits = ft.key, ft.token, ft.ref, ft.node, ft.lists, ft.pb, ft.bits
    moved = 0
    for i in range(pages.size):
        key = base + pages[i]
        if node[target, NFREE] <= keep_free:
            ctr[C.MIGRATIONS_REFUSED] += pages.size - i
            break
        old = pte[key]
        f = alloc_frame(node, lists, pb, bits, fkey, fref, target, key)
        ftoken[f] = ftoken[old]
        pte[key] = f
        pflags[key] = (pflags[key] | P_DEVICE) if device else (pflags[key] & ~P_DEVICE)
        free_frame(node, lists, pb, bits, fkey, ftoken, old)
        moved += 1
    ctr[C.PAGES_MIGRATED] += moved
    return moved


def migrate(sim: "Simulation", mm: "MM", pages: np.ndarray, node: int, owner: object | None = None,
            keep_free: int = 0) -> int:  # fmt: skip
    """Move ``pages`` of ``mm`` to frames on ``node`` while it has more than ``keep_free`` free frames.

    Returns the number moved; pinned pages and those the target had no room for are refused.
    """
    host = sim.host
    mm = mm_arg(sim, mm, "migrate")
    asked = pages_arg(pages, mm.npages, "migrate")
    node = sim.host._node(node, "migrate")
    keep_free = count_arg(keep_free, "migrate", "keep_free")
    if owner is not None and not any(owner is s for s in sim.secondaries):
        raise OperationError(
            f"migrate: owner must be None or one of sim.secondaries (the device asking), got {owner!r}"
        )
    if asked.size == 0:
        return 0
    split(sim, mm, asked)  # pages move one by one: split any THP first
    device = node in host.device_nodes
    # Device migration in either direction (to device memory, or migrate_to_ram back) is migrate_vma_*.
    event = Event.MIGRATE if device or bool((mm.flags[asked] & P_DEVICE).any()) else Event.CLEAR
    ok = np.empty(asked.size, dtype=np.bool_)
    ft = host._ft
    host._ctr[C.MIGRATIONS_REFUSED] += _movable(host._pt.pte, ft.key, ft.pin, ft.pb, mm.base, asked, node, ok)
    pages = asked[ok]
    if event is Event.CLEAR:
        # The target's room is checked before anything is unmapped (migrate_balanced_pgdat and
        # numamigrate_isolate_folio for NUMA balancing; a full target fails the allocation): the pages beyond it
        # are refused, untouched. (migrate_vma_collect unmaps the whole range first, whatever the target has.)
        room = max(int(ft.node[node, NFREE]) - keep_free, 0)
        if pages.size > room:
            host._ctr[C.MIGRATIONS_REFUSED] += pages.size - room
            pages = pages[:room]
        if pages.size == 0:
            return 0
    moved = 0

    def move() -> None:
        nonlocal moved
        moved = _move(host._pt, host._ft, host._ctr, mm.base, pages, node, keep_free, device)

    if event is Event.MIGRATE:  # migrate_vma_collect: one range per contiguous run asked for
        mm.invalidate(page_runs(mm, np.unique(asked), event, owner=owner), move)
    else:  # per page, as try_to_migrate_one (and under kernel=2008, try_to_unmap_one's invalidate_page)
        mm._invalidate_pages(pages, event, move)
    return moved
