"""The tables of every secondary MMU of a run, in one set of arrays.

Each secondary MMU owns a table over the pages of its mm (``spte``, ``sflags``), the framework keeps a
shadow byte per entry beside it (``shadow``, the ``SH_*`` bits of ``mmnsim.pagebits``: what the access kernel
saw and whether the framework pinned the entry's frame, out of the plugin's reach), and
``state`` holds the fault-side protocol (sequence, in-progress window, ...; ``mmnsim.secondary``). Here
they are slices of run-wide arrays, one row of ``state`` each, so that a compiled kernel can reach the
table of any secondary by its index (``offset[i]`` to ``offset[i + 1]``): reclaim's young ops and
invalidations for every subscriber of a page's mm run in one kernel (``mmnsim.fastpath``). A plugin sees
only views of its own slices, as before.

``acc`` counts, per secondary, the work the compiled path did on its behalf since the framework last
settled it with the plugin (``SecondaryMMU._settle``): pages zapped and ranges that zapped something,
pages aged and ranges found young, which the plugin turns into its costs and metrics.
"""

import numpy as np

from .pagebits import PTE_NONE

# Columns of SecondaryTables.acc.
ACC_ZAPPED, ACC_ZAP_RANGES, ACC_AGED, ACC_YOUNG, ACC_FLUSH_YOUNG = range(5)
ACC_SIZE = 5


class SecondaryTables:
    """``sizes[i]`` entries for the i-th secondary MMU built (0 for one that keeps no table)."""

    def __init__(self, sizes: list[int], state_size: int):
        self.offset = np.zeros(len(sizes) + 1, dtype=np.int64)
        self.offset[1:] = np.cumsum(sizes)
        total = int(self.offset[-1])
        self.spte = np.full(total, PTE_NONE, dtype=np.int32)
        self.sflags = np.zeros(total, dtype=np.uint8)
        self.shadow = np.zeros(total, dtype=np.uint8)
        self.state = np.zeros((len(sizes), state_size), dtype=np.int64)
        self.acc = np.zeros((len(sizes), ACC_SIZE), dtype=np.int64)
        self.mm = np.full(len(sizes), -1, dtype=np.int64)  # the mm index of each secondary
        self._taken = 0

    def take(self, entries: int, mm: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The next secondary's index, its ``spte``, ``sflags`` and ``shadow`` slices and its ``state`` row."""
        i = self._taken
        if i >= self.state.shape[0] or self.offset[i + 1] - self.offset[i] != entries:
            raise RuntimeError(f"secondary table {i}: {entries} entries asked, not the {self.sizes()} laid out")
        self._taken += 1
        self.mm[i] = mm
        lo, hi = int(self.offset[i]), int(self.offset[i + 1])
        return i, self.spte[lo:hi], self.sflags[lo:hi], self.shadow[lo:hi], self.state[i]

    def sizes(self) -> list[int]:
        return np.diff(self.offset).tolist()
