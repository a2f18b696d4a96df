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
    plugins get of the host's state, whose writable arrays only the framework holds.

    Built on a read-only buffer (``memoryview.toreadonly``), not by clearing the view's WRITEABLE flag: numpy
    lets anyone set that flag again on a view of writable memory, but never on memory exported read-only,
    nor on any view, reshape or ``np.asarray`` of it. No copy: the framework's writes show through."""
    if not a.flags.c_contiguous:
        raise ValueError("read_only needs a C-contiguous array (a buffer export of it is one block)")
    return np.frombuffer(memoryview(a).toreadonly(), dtype=a.dtype).reshape(a.shape)


def frozen(a: np.ndarray) -> np.ndarray:
    """An immutable copy of ``a``: an array over a ``bytes`` object, which nothing can write (not numpy, not
    its ``.base``). For the arrays the framework hands to plugins and reads again afterwards (a notifier
    range's pages): a plugin can neither change them nor keep a writable alias of them."""
    return np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=a.dtype).reshape(a.shape)


def is_frozen(a: np.ndarray) -> bool:
    """Whether ``a`` is one of ``frozen``'s arrays (1-D): it needs no copy to be safe from its caller."""
    return type(a.base) is bytes


def read_only_tables(t: tuple) -> tuple:
    """A table (PageTable, FrameTable, SwapTable) of read-only views of ``t``'s arrays."""
    return type(t)(*(read_only(a) if isinstance(a, np.ndarray) else a for a in t))
