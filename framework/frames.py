"""Host physical memory: 4 KiB frames on NUMA nodes, grouped in 2 MiB pageblocks, with free lists.

All state is numpy arrays, gathered in the ``FrameTable`` tuple for Python. The numba functions take the
arrays themselves, not the tuple: numba reference-counts every field taken out of a tuple, which costs
more than the work in a function this small.

The allocator is a two-order buddy system: a pageblock whose 512 frames are all free sits on its node's
free-block list (an order-9 block, available for a transparent huge page); a pageblock with some free
frames sits on the node's partial list, and a bitmap says which of its frames are free. Order-0
allocations take from partial pageblocks first and split a free block only when none is left, as the
buddy allocator takes the smallest free block that fits; that keeps free memory in whole pageblocks
where it can. Simplifications: no migratetypes, no per-cpu lists, one zone per node.
"""

from typing import NamedTuple

import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from .kernel import kernel

PAGE_SIZE = 4096
PAGEBLOCK_PAGES = 512  # 2 MiB / 4 KiB
PAGEBLOCK_SHIFT = 9
WORDS = PAGEBLOCK_PAGES // 64  # uint64 words in a pageblock's free bitmap
FREE = -1  # FrameTable.key of a free frame
ORPHAN = -2  # FrameTable.key of a frame no page maps any more but a long-term pin still holds
# FrameTable.key of a shared, write-protected frame (a KSM page) mapped by n pages: SHARED - (n - 1), so
# SHARED for one, SHARED - 1 for two, ... (see ``mmnsim.share``). Every key < 0 is skipped by reclaim,
# migration and compaction, which move only frames that name their one page.
SHARED = -3
# FrameTable.ref under two-list reclaim: the folio's PG_active and PG_referenced (mm/vmscan.c, mm/swap.c).
LRU_ACTIVE, LRU_REFERENCED = 2, 4

# Columns of FrameTable.node (one row per NUMA node). N_ON_LIST + kind counts the pageblocks on a list.
PB_LO, PB_HI, NFREE, N_ON_LIST, _N_ON_FREEBLK, WMARK_MIN, WMARK_LOW, WMARK_HIGH, NFRAMES = range(9)
NODE_COLUMNS = 9
# Columns of FrameTable.pb (one row per pageblock).
PB_NFREE, PB_SIZE, PB_NODE, PB_LIST, PB_POS = range(5)
PB_COLUMNS = 5
# Pageblock lists: the row of FrameTable.lists, and the value of pb[:, PB_LIST].
NO_LIST, PARTIAL, FREEBLK = -1, 0, 1

# FrameTable.reg: host-wide registers.
REG_CLOCK_HAND, REG_FLAGS, REG_HINTS = range(3)  # REG_HINTS: records in FrameTable.hints
REG_SIZE = 3
HINT_CAPACITY = 1 << 18  # hinting-fault records kept between two runs of a NUMA policy
# Bits of reg[REG_FLAGS].
KSWAPD_FUTILE = 1  # kswapd reclaimed nothing this tick: don't wake it again until the next tick
RECLAIM_FUTILE = 2  # direct reclaim reclaimed nothing this tick: fail allocations at once (OOM)
OOM_FLAGS = KSWAPD_FUTILE | RECLAIM_FUTILE  # both are cleared at the start of every tick
THP_ENABLED = 4  # transparent huge pages at fault time (host.thp: always or madvise)
THP_MADVISE = 8  # ... only in an mm that asked for them (MM_HUGEPAGE; host.thp: madvise)
MEMCG = 16  # the host is a memory cgroup's limit (host.memcg): no watermarks, no kswapd, direct reclaim only
LRU_LISTS = 32  # two-list reclaim (``Simulation.use_lru_lists``): FrameTable.ref holds the folios' LRU flags

_ONE = np.uint64(1)


class FrameTable(NamedTuple):
    key: np.ndarray  # int32 per frame: the global page key it holds, FREE, ORPHAN, or <= SHARED
    token: np.ndarray  # uint32 per frame: the content it holds
    pin: np.ndarray  # uint16 per frame: long-term pin count
    # uint8 per frame: the exact CLOCK's reference bit (1); under two-list reclaim (``mmnsim.lru``) the folio's
    # LRU flags instead, LRU_ACTIVE and LRU_REFERENCED, on a THP's first frame. Cleared when a frame is
    # allocated: a new folio starts inactive and unreferenced (since 5.9, commit b518154e59aa, folio_add_lru).
    ref: np.ndarray
    pb: np.ndarray  # int32 [pageblocks, PB_COLUMNS]
    bits: np.ndarray  # uint64 [pageblocks, WORDS]: free bitmap of each pageblock
    lists: np.ndarray  # int32 [2, pageblocks]: per-node stacks (node n in [PB_LO, PB_HI)) of each list
    node: np.ndarray  # int64 [nodes, NODE_COLUMNS]
    node_order: np.ndarray  # int32 [ram nodes, ram nodes]: allocation fallback order, nearest first
    distance: np.ndarray  # int64 [ram nodes, nodes]: SLIT distance from a CPU's node to a frame's (10 local)
    hints: np.ndarray  # int64 [HINT_CAPACITY, 2]: (page key, accessing node) of NUMA hinting faults
    reg: np.ndarray  # int64 [REG_SIZE]


def new_frame_table(node_frames: list[int], distance: np.ndarray, watermarks: np.ndarray) -> FrameTable:
    """Frames for nodes of the given sizes (whole pageblocks, but the last node's may end short).

    ``watermarks`` is [nodes, 3]: min, low, high in frames. ``distance`` covers the RAM nodes; nodes past
    them are device memory, in no fallback order.
    """
    nodes = len(node_frames)
    pb_counts = [-(-n // PAGEBLOCK_PAGES) for n in node_frames]
    npb = sum(pb_counts)
    ft = FrameTable(
        key=np.full(sum(node_frames), FREE, dtype=np.int32),
        token=np.zeros(sum(node_frames), dtype=np.uint32),
        pin=np.zeros(sum(node_frames), dtype=np.uint16),
        ref=np.zeros(sum(node_frames), dtype=np.uint8),
        pb=np.zeros((npb, PB_COLUMNS), dtype=np.int32),
        bits=np.zeros((npb, WORDS), dtype=np.uint64),
        lists=np.full((2, npb), -1, dtype=np.int32),
        node=np.zeros((nodes, NODE_COLUMNS), dtype=np.int64),
        node_order=np.argsort(distance, axis=1, kind="stable").astype(np.int32),
        distance=np.pad(
            np.asarray(distance, dtype=np.int64), ((0, 0), (0, nodes - len(distance))), constant_values=10
        ),  # a device's own memory is local to it  # fmt: skip
        hints=np.zeros((HINT_CAPACITY, 2), dtype=np.int64),
        reg=np.zeros(REG_SIZE, dtype=np.int64),
    )
    first = 0
    for n, count in enumerate(node_frames):
        blocks = range(first, first + pb_counts[n])
        ft.node[n, [PB_LO, PB_HI, NFREE, NFRAMES]] = (first, first + pb_counts[n], count, count)
        ft.node[n, WMARK_MIN : WMARK_HIGH + 1] = watermarks[n]
        for b in blocks:
            size = min(PAGEBLOCK_PAGES, count - (b - first) * PAGEBLOCK_PAGES)
            ft.pb[b] = (size, size, n, NO_LIST, -1)
            free = np.zeros(PAGEBLOCK_PAGES, dtype=bool)
            free[:size] = True
            ft.bits[b] = np.packbits(free, bitorder="little").view(np.uint64)
        # Lowest pageblock on top of the stack, so an empty host hands out frames in address order.
        for b in reversed(blocks):
            _push(ft.node, ft.lists, ft.pb, FREEBLK if ft.pb[b, PB_SIZE] == PAGEBLOCK_PAGES else PARTIAL, b)
        first += pb_counts[n]
    return ft


@kernel(inline=True)
def _push(node, lists, pb, kind, b):
    n = pb[b, PB_NODE]
    pos = node[n, PB_LO] + node[n, N_ON_LIST + kind]
    lists[kind, pos] = b
    pb[b, PB_POS] = pos
    pb[b, PB_LIST] = kind
    node[n, N_ON_LIST + kind] += 1


@kernel(inline=True)
def _remove(node, lists, pb, b):
    kind = pb[b, PB_LIST]
    n = pb[b, PB_NODE]
    last = node[n, PB_LO] + node[n, N_ON_LIST + kind] - 1
    pos = pb[b, PB_POS]
    moved = lists[kind, last]
    lists[kind, pos] = moved
    pb[moved, PB_POS] = pos
    lists[kind, last] = -1
    pb[b, PB_POS] = -1
    pb[b, PB_LIST] = NO_LIST
    node[n, N_ON_LIST + kind] -= 1


@kernel(inline=True)
def alloc_frame(node, lists, pb, bits, key, ref, n, k):
    """Take a free frame on node ``n`` for page ``k`` and return it, or -1 if the node has none."""
    if node[n, N_ON_LIST + PARTIAL] > 0:
        b = lists[PARTIAL, node[n, PB_LO] + node[n, N_ON_LIST + PARTIAL] - 1]
    elif node[n, N_ON_LIST + FREEBLK] > 0:
        b = lists[FREEBLK, node[n, PB_LO] + node[n, N_ON_LIST + FREEBLK] - 1]
        _remove(node, lists, pb, b)
        _push(node, lists, pb, PARTIAL, b)
    else:
        return -1
    f = -1
    for w in range(WORDS):
        word = bits[b, w]
        if word != 0:
            bits[b, w] = word & (word - _ONE)
            f = (b << PAGEBLOCK_SHIFT) + w * 64 + trailing_zeros(word)
            break
    key[f] = k
    if ref[f]:  # (a store only where needed: the array stays untouched, no memory, outside exact CLOCK)
        ref[f] = 0
    pb[b, PB_NFREE] -= 1
    if pb[b, PB_NFREE] == 0:
        _remove(node, lists, pb, b)
    node[n, NFREE] -= 1
    return f


@kernel
def alloc_pageblock(node, lists, pb, bits, key, ref, n, first_key):
    """Take a whole free pageblock on node ``n`` (an order-9 block, for a transparent huge page) and give
    its frames to keys ``first_key, first_key + 1, ...``; return its first frame, or -1 if none is free."""
    if node[n, N_ON_LIST + FREEBLK] == 0:
        return -1
    b = lists[FREEBLK, node[n, PB_LO] + node[n, N_ON_LIST + FREEBLK] - 1]
    _remove(node, lists, pb, b)
    base = b << PAGEBLOCK_SHIFT
    for i in range(PAGEBLOCK_PAGES):
        key[base + i] = first_key + i
        if ref[base + i]:
            ref[base + i] = 0
    bits[b, :] = 0
    pb[b, PB_NFREE] = 0
    node[n, NFREE] -= PAGEBLOCK_PAGES
    return base


@kernel
def take_frame(node, lists, pb, bits, key, ref, f, k):
    """Allocate the particular free frame ``f`` for page ``k`` (compaction's free scanner picks it)."""
    b = f >> PAGEBLOCK_SHIFT
    off = f - (b << PAGEBLOCK_SHIFT)
    bits[b, off >> 6] &= ~(_ONE << np.uint64(off & 63))
    if pb[b, PB_LIST] == FREEBLK:
        _remove(node, lists, pb, b)
        _push(node, lists, pb, PARTIAL, b)
    key[f] = k
    if ref[f]:
        ref[f] = 0
    pb[b, PB_NFREE] -= 1
    if pb[b, PB_NFREE] == 0:
        _remove(node, lists, pb, b)
    node[pb[b, PB_NODE], NFREE] -= 1


@kernel(inline=True)
def free_frame(node, lists, pb, bits, key, token, f):
    """Return frame ``f`` to its node's free lists. The caller has dropped every reference to it."""
    b = f >> PAGEBLOCK_SHIFT
    key[f] = FREE
    token[f] = 0
    off = f - (b << PAGEBLOCK_SHIFT)
    bits[b, off >> 6] |= _ONE << np.uint64(off & 63)
    if pb[b, PB_LIST] == NO_LIST:
        _push(node, lists, pb, PARTIAL, b)
    pb[b, PB_NFREE] += 1
    if pb[b, PB_NFREE] == PAGEBLOCK_PAGES:
        _remove(node, lists, pb, b)
        _push(node, lists, pb, FREEBLK, b)
    node[pb[b, PB_NODE], NFREE] += 1


@kernel
def is_device_frame(pb, node_order, f):
    """Whether frame ``f`` is device-private memory (its node is past the RAM nodes)."""
    return pb[f >> PAGEBLOCK_SHIFT, PB_NODE] >= node_order.shape[0]


@kernel(inline=True)
def sharers(key):
    """Pages mapping a frame whose key is ``key`` <= SHARED."""
    return SHARED + 1 - key
