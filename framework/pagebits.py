"""Bit layouts of the per-page arrays, shared by the framework's kernels and by plugins.

The primary page table is three arrays indexed by a page's global key (see ``pagetable``):

* ``pte``   int32: ``>= 0`` the frame mapping the page; ``PTE_NONE`` nothing; ``<= -2`` a swap entry,
  encoded as ``-2 - slot`` just as the kernel keeps swap entries in non-present PTEs.
* ``flags`` uint8: the ``P_*`` bits below. The VMA bits describe the address space (what mmap and
  mprotect set); the other bits describe the PTE.
* ``token`` uint32: the content the page must hold (0 for a never-written or discarded page).

A secondary MMU's table is two arrays indexed by the page number inside its mm: ``spte`` (int32 frame
or ``PTE_NONE``) and ``sflags`` (uint8, the ``S_*`` bits); beside them the framework keeps ``accessed``
(uint8, the ``SH_*`` bits), which the plugin can read but not write.
"""

import numpy as np

from .kernel import kernel

PTE_NONE = -1
HUGE_PAGES = 512  # pages of a transparent huge page (2 MiB), aligned in the mm and in one pageblock

# Primary page-table flags (uint8).
P_YOUNG = 1  # accessed since last cleared (the PTE's A bit)
P_DIRTY = 2  # written since faulted in
P_PROTNONE = 4  # PROT_NONE hinting entry (NUMA balancing); the VMA stays accessible
P_HUGE = 8  # mapped by a PMD (transparent huge page)
P_VMA = 16  # inside a mapped VMA
P_READ = 32  # VMA allows reads
P_WRITE = 64  # VMA allows writes
P_DEVICE = 128  # the page lives in device-private memory: the CPU cannot access it (a device-private entry)

P_VMA_RW = P_VMA | P_READ | P_WRITE

# Secondary table flags (uint8).
S_ACCESSED = 1  # the device/EPT accessed bit, set by the framework on every access through the entry
S_WRITABLE = 2  # the entry allows writes
S_HUGE = 4  # the entry maps 2 MiB
S_PINNED = 8  # the entry holds a long-term pin on its frame (for the plugin to read: the framework keeps its own)

# Bits of ``SecondaryMMU.accessed`` (uint8 per entry): the framework's own record of each entry, which the plugin
# reads and cannot write, and which the checks and the kernels trust instead of the plugin's ``sflags``.
SH_ACCESSED = 1  # an access went through the entry since the accessed state was last cleared (the shadow)
SH_PINNED = 2  # the framework pinned the entry's frame when it installed it, and unpins it when it goes


@kernel
def swap_entry(slot):
    """Encode a swap slot (or an array of them) as a non-present PTE value."""
    return -2 - slot


@kernel
def swap_slot(pte):
    """Decode a swap entry PTE value into its slot."""
    return -2 - pte


def clear_mask(bits: int) -> np.uint8:
    """The uint8 mask that clears ``bits``: ``flags & clear_mask(S_ACCESSED)``. (numpy refuses a uint8
    array ``& ~bits``, since ``~bits`` is a negative int.)"""
    return np.uint8(0xFF ^ bits)
