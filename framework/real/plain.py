"""A plain tenant's memory (``processes`` under backend=real): anonymous memory that its own process touches
with its workload's access list, in the guest process's place (``mmnsim.real.child``, kind ``process``).

It reads the same shared buffer and encoding as the KVM guest (``mmnsim.real.program``: ``page << 1 |
write``) and touches the same 8 bytes of each page (the page's own cache line, ``page % 64``), with numpy
in this process instead of a vCPU: a gather for the reads, a scatter for the writes. Within each slice of
``SLICE`` accesses the reads go first, then the writes, so the order of accesses is kept to within a slice:
a page whose first touch in a slice is a write but which is also read there is read first (a read fault
before the write fault, where the list has one write fault). With the boot pass every page is touched
before the workload starts, so this matters only to pages reclaim took meanwhile.

A process has one thread here, whatever its ``vcpus`` (the model only divides its time by them).
"""

import time

import numpy as np

from .hostmem import HUGE_PAGE_SIZE, PAGE_SIZE, Mapping
from .machine import ENTRY_BYTES, RamOps

SLICE = 4096  # accesses replayed at once: reads, then writes
LINE = 64  # bytes per cache line: access i touches page p at byte (p % 64) * 64, as the guest program does


class PlainMemory(RamOps):
    """``memory_mib`` of anonymous private memory (2 MiB aligned, so THP can back it) and the buffer of access
    lists (``buffer_fd``, ``chunk_accesses`` entries)."""

    vcpu_tids: list[int] = []
    ram_gpa = 0

    def __init__(self, memory_mib: int, buffer_fd: int, chunk_accesses: int):
        self.chunk_accesses = chunk_accesses
        self.buffer = Mapping(-(-chunk_accesses * ENTRY_BYTES // PAGE_SIZE) * PAGE_SIZE, fd=buffer_fd)
        try:
            self.ram = Mapping(memory_mib << 20, align=HUGE_PAGE_SIZE)
        except BaseException:
            self.buffer.close()
            raise
        self._lists = np.frombuffer(self.buffer.bytes_view(), dtype=np.uint32)
        self._words = np.frombuffer(self.ram.bytes_view(), dtype=np.uint64)

    @property
    def ram_range(self) -> tuple[int, int]:
        return self.ram.address, self.ram.end

    def run(self, counts: list[int]) -> float:
        """Replay the first ``counts[0]`` entries of the buffer; returns the wall time in seconds."""
        if len(counts) != 1 or not 0 <= counts[0] <= self.chunk_accesses:
            raise ValueError(f"counts must be one number in [0, {self.chunk_accesses}], got {counts}")
        start = time.perf_counter()
        words = self._words
        for first in range(0, counts[0], SLICE):
            entries = self._lists[first : min(first + SLICE, counts[0])]
            pages = (entries >> 1).astype(np.int64)
            index = pages * (PAGE_SIZE // 8) + (pages % LINE) * (LINE // 8)
            write = (entries & 1).astype(bool)
            words[index[~write]].sum()  # the loads: each a read of its page
            words[index[write]] = 1  # the stores
        return time.perf_counter() - start

    def stats(self) -> tuple[dict, list]:
        """No KVM here: no statistics."""
        return {}, []

    def close(self) -> None:
        self.unpin()
        self._lists = self._words = None  # the views must go before their mappings
        self.ram.close()
        self.buffer.close()
