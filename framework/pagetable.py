"""The primary page tables of every mm on the host, as three arrays indexed by a page's global key.

Each mm owns the keys ``[mm_base[i], mm_base[i + 1])``; the key of page ``p`` of mm ``i`` is
``mm_base[i] + p``. One key space lets reclaim and the invariant checks go from a frame to the PTE that
maps it (``FrameTable.key``, the reverse map) without asking which mm it is in. See ``pagebits`` for the
layout of each array.
"""

from typing import NamedTuple

import numpy as np

from .pagebits import PTE_NONE

# Bits of PageTable.mm_flags.
MM_HAS_NOTIFIERS = 1  # the mm's notifier chain has subscribers: unmapping must call it
MM_EXITED = 2
MM_HUGEPAGE = 4  # the mm's memory is madvised MADV_HUGEPAGE (QEMU does it for guest RAM): THP faults may compact


class PageTable(NamedTuple):
    pte: np.ndarray  # int32 per key
    flags: np.ndarray  # uint8 per key
    token: np.ndarray  # uint32 per key
    mm_base: np.ndarray  # int64 [mms + 1]
    mm_flags: np.ndarray  # int64 [mms]


def new_page_table(mm_pages: list[int]) -> PageTable:
    base = np.zeros(len(mm_pages) + 1, dtype=np.int64)
    base[1:] = np.cumsum(mm_pages)
    total = int(base[-1])
    return PageTable(
        pte=np.full(total, PTE_NONE, dtype=np.int32),
        flags=np.zeros(total, dtype=np.uint8),
        token=np.zeros(total, dtype=np.uint32),
        mm_base=base,
        mm_flags=np.zeros(len(mm_pages), dtype=np.int64),
    )


def read_only(a: np.ndarray) -> np.ndarray:
    """A view of ``a`` that numpy refuses to write through ("assignment destination is read-only"): what
    plugins get of the host's state, whose writable arrays only the framework holds."""
    view = a.view()
    view.flags.writeable = False
    return view


def read_only_tables(t: tuple) -> tuple:
    """A table (PageTable, FrameTable, SwapTable) of read-only views of ``t``'s arrays."""
    return type(t)(*(read_only(a) if isinstance(a, np.ndarray) else a for a in t))
