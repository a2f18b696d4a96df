"""The guest's own page tables: a 4-level identity map of its memory, with 2 MiB or 4 KiB leaves.

x86-64 4-level paging (Intel SDM vol. 3, 4.5): CR3 points at the PML4; each level is a 4 KiB table of 512
8-byte entries; a virtual address picks PML4[47:39], PDPT[38:30], PD[29:21] and, with 4 KiB pages, PT[20:12].
A PD entry with the PS bit maps a 2 MiB page directly: that is a guest huge page (``guest_thp``), the page
size the guest kernel would use for its memory. KVM's shadow MMU mirrors this structure (arch/x86/kvm/mmu/
paging_tmpl.h, FNAME(walk_addr_generic)), so a guest 4 KiB page always gets a 4 KiB spte, and a guest
2 MiB page gets a 2 MiB spte where the host backs it with a huge page (and 4 KiB ones where it does not).

Every entry has P, W and U (the guest runs at CPL3: a U=0 entry at any level would fault). Leaves also
have A and D set, as the kernel's direct map has them (PAGE_KERNEL): the shadow MMU then never takes a fault
only to set a guest accessed or dirty bit, and its prefetch (FNAME(pte_prefetch), up to 8 neighbouring
sptes whose guest entries are accessed and whose host pages are present) works as in a long-running guest.

The map is an identity: guest-virtual = guest-physical, for each region given, and nothing else is mapped.
"""

import numpy as np

PAGE_SHIFT, HUGE_SHIFT, GIB_SHIFT = 12, 21, 30
ENTRIES = 512

# Page-table entry bits (Intel SDM vol. 3, tables 4-14 to 4-19)
P, W, U, A, D, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
TABLE = P | W | U  # an entry pointing at the next level's table
LEAF = P | W | U | A | D  # an entry mapping a page


def _blocks(regions: list[tuple[int, int]]) -> np.ndarray:
    """The 2 MiB blocks (guest-physical >> 21) the regions cover, sorted."""
    for start, end in regions:
        if start % (1 << HUGE_SHIFT) or end % (1 << HUGE_SHIFT) or end <= start:
            raise ValueError(f"region [{start:#x}, {end:#x}) is not a nonempty run of whole 2 MiB blocks")
        if end > 1 << 39:
            raise ValueError(f"region [{start:#x}, {end:#x}) lies above 512 GiB, beyond one PDPT")
    return np.unique(np.concatenate([np.arange(s >> HUGE_SHIFT, e >> HUGE_SHIFT) for s, e in regions]))


def table_pages(regions: list[tuple[int, int]], huge: bool) -> int:
    """How many 4 KiB table pages ``build`` needs for these regions."""
    blocks = _blocks(regions)
    directories = np.unique(blocks >> (GIB_SHIFT - HUGE_SHIFT)).size
    return 2 + directories + (0 if huge else blocks.size)  # PML4, one PDPT, the PDs, the PTs


def build(tables: np.ndarray, base: int, regions: list[tuple[int, int]], huge: bool) -> int:
    """Write the page tables identity-mapping ``regions`` into ``tables`` and return the value for CR3.

    ``tables`` is a uint64 array of shape (``table_pages(regions, huge)``, 512), the memory of the tables,
    which the guest sees at guest-physical ``base`` (4 KiB-aligned). ``regions`` are ``[start, end)``
    guest-physical ranges in whole 2 MiB blocks. With ``huge`` every block is one 2 MiB leaf, otherwise a
    page table of 512 4 KiB leaves.
    """
    blocks = _blocks(regions)
    gibs = np.unique(blocks >> (GIB_SHIFT - HUGE_SHIFT))
    if tables.shape != (table_pages(regions, huge), ENTRIES) or tables.dtype != np.uint64:
        raise ValueError(f"tables must be uint64 of shape ({table_pages(regions, huge)}, {ENTRIES})")
    if base % (1 << PAGE_SHIFT):
        raise ValueError(f"tables must lie on a page boundary, got {base:#x}")
    U64 = np.uint64

    def address(row):  # guest-physical address of table page ``row``
        return U64(base) + (np.asarray(row, dtype=U64) << U64(PAGE_SHIFT))

    tables[:] = 0
    pml4, pdpt, first_pd = 0, 1, 2
    tables[pml4, 0] = address(pdpt) | U64(TABLE)  # PML4[0] covers 0-512 GiB
    pd_rows = first_pd + np.arange(gibs.size)
    tables[pdpt, gibs] = address(pd_rows) | U64(TABLE)
    pd_of_block = first_pd + np.searchsorted(gibs, blocks >> (GIB_SHIFT - HUGE_SHIFT))
    slot = blocks & (ENTRIES - 1)
    block_address = blocks.astype(U64) << U64(HUGE_SHIFT)
    if huge:
        tables[pd_of_block, slot] = block_address | U64(LEAF | PS)
    else:
        pt_rows = first_pd + gibs.size + np.arange(blocks.size)
        tables[pd_of_block, slot] = address(pt_rows) | U64(TABLE)
        pages = np.arange(ENTRIES, dtype=U64) << U64(PAGE_SHIFT)
        for i in range(0, blocks.size, 4096):  # in slices: no temporary as large as the tables
            rows = slice(i, i + 4096)
            tables[pt_rows[rows]] = (block_address[rows, None] + pages[None, :]) | U64(LEAF)
    return base + pml4 * (1 << PAGE_SHIFT)
