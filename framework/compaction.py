"""Memory compaction (mm/compaction.c): empty whole pageblocks by migrating their pages elsewhere.

On one node, a migrate scanner walks pageblocks from the bottom and a free scanner from the top. Each
pageblock the migrate scanner visits that holds movable pages only is emptied: its pages move to free
frames the free scanner finds in partly used pageblocks above it, so the pageblock becomes a whole free
block, ready for a transparent huge page. A pageblock holding a pinned page cannot be emptied (the kernel
cannot migrate a maybe-DMA-pinned page): it is skipped and counted as a compaction failure, as are blocks
of device memory, orphaned frames or an existing THP. Each batch of moves raises CLEAR through the
owning mm's notifier chain, one range per page, before the pages move: compaction migrates through
migrate_pages, whose try_to_migrate_one (mm/rmap.c) clears each PTE with MMU_NOTIFY_CLEAR.
"""

from typing import TYPE_CHECKING

import numpy as np

from . import counters as C
from .arguments import count_arg
from .frames import FREE, PAGEBLOCK_SHIFT, PB_HI, PB_LO, PB_NFREE, PB_SIZE, free_frame, take_frame
from .kernel import kernel
from .notifier import Event
from .pagebits import P_HUGE

if TYPE_CHECKING:
    from .simulation import Simulation


@kernel
def _plan(pflags, ft, ctr, n, want, src, dst):
    """Pair the used frames of up to ``want`` pageblocks (from the bottom) with free frames of partly used
    pageblocks above them. Returns (pairs, pageblocks planned)."""
    fkey, fpin, pb, node = ft.key, ft.pin, ft.pb, ft.node
    m, top = node[n, PB_LO], node[n, PB_HI] - 1
    free_pb, free_off = top, 0
    pairs = blocks = 0
    while m < free_pb and blocks < want:
        size = pb[m, PB_SIZE]
        lo = m << PAGEBLOCK_SHIFT
        used = size - pb[m, PB_NFREE]
        movable = used > 0 and size == 512
        for f in range(lo, lo + size):
            k = fkey[f]
            if k == FREE:
                continue
            if k < 0 or fpin[f] > 0 or pflags[k] & P_HUGE:  # orphaned, pinned, or already a THP
                movable = False
                if fpin[f] > 0:
                    ctr[C.COMPACT_FAIL] += 1  # a pin makes the whole pageblock unmovable
                break
        if not movable:
            m += 1
            continue
        # Find ``used`` free frames above m, in partly used pageblocks only.
        start_pairs = pairs
        for f in range(lo, lo + size):
            if fkey[f] == FREE:
                continue
            target = -1
            while free_pb > m and target < 0:
                if 0 < pb[free_pb, PB_NFREE] < pb[free_pb, PB_SIZE]:
                    base = free_pb << PAGEBLOCK_SHIFT
                    while free_off < pb[free_pb, PB_SIZE]:
                        g = base + free_off
                        free_off += 1
                        if fkey[g] == FREE:  # the scanner never looks at a frame twice
                            target = g
                            break
                if target < 0:
                    free_pb -= 1
                    free_off = 0
            if target < 0:
                return start_pairs, blocks  # nowhere left to move to: give up this block
            src[pairs] = f
            dst[pairs] = target
            pairs += 1
        blocks += 1
        m += 1
    return pairs, blocks


@kernel
def _move(pt, ft, ctr, src, dst):
    pte = pt.pte
    fkey, ftoken, fref, node, lists, pb, bits = ft.key, ft.token, ft.ref, ft.node, ft.lists, ft.pb, ft.bits
    for i in range(src.size):
        f, g = src[i], dst[i]
        key = fkey[f]
        take_frame(node, lists, pb, bits, fkey, fref, g, key)
        ftoken[g] = ftoken[f]
        pte[key] = g
        free_frame(node, lists, pb, bits, fkey, ftoken, f)
    ctr[C.PAGES_MIGRATED] += src.size


def compact(sim: "Simulation", node: int, blocks: int) -> int:
    """Try to empty ``blocks`` pageblocks of ``node`` (a RAM node); return how many became whole free blocks."""
    host = sim.host
    node = sim.host._node(node, "compact", ram=True)
    blocks = min(count_arg(blocks, "compact", "blocks"), int(host._ft.pb.shape[0]))  # no more than it has
    cap = blocks * 512
    src = np.empty(cap, dtype=np.int64)
    dst = np.empty(cap, dtype=np.int64)
    pairs, planned = _plan(host._pt.flags, host._ft, host._ctr, node, blocks, src, dst)
    if pairs == 0:
        return 0
    src, dst = src[:pairs], dst[:pairs]
    keys = host._ft.key[src].astype(np.int64)
    owners = np.searchsorted(host._pt.mm_base, keys, side="right") - 1
    for index in np.unique(owners):
        mm = sim.mms[index]
        sel = owners == index

        def move(sel=sel) -> None:
            _move(host._pt, host._ft, host._ctr, src[sel], dst[sel])

        mm._invalidate_pages(keys[sel] - mm.base, Event.CLEAR, move)  # per page; invalidate_page on kernel=2008
    host._ctr[C.COMPACT_SUCCESS] += planned
    return planned
