"""Trace replay: the accesses of a recorded program, from a file in any format ``mmnsim.read_trace`` reads.

The trace's page numbers are mapped into the client's address space: ``page = (trace page - offset) x
scale``, or with ``fit: true`` the trace's own page range is stretched or squeezed onto the whole mm (this
reads the trace once more, first). ``remap: dense`` first renumbers the pages 0, 1, 2, ... in order of first
appearance, for raw virtual addresses (lackey). A page that lands outside the mm is an error naming the
file and the record.

The trace's write flags are used when its format has them (mmt, lackey, csv with a write column);
otherwise ``write_fraction`` draws them. ``accesses: 0`` replays the trace once (``loop: true``: forever,
so give a number); a positive ``accesses`` stops there, looping the trace if ``loop`` and it runs out.
"""

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from numba import njit

from mmnsim import (
    TRACE_FORMATS,
    Collapser,
    ConfigError,
    Densifier,
    TraceError,
    Workload,
    WorkloadConfig,
    hookimpl,
    probe,
    read_trace,
    require,
)


class Remap(StrEnum):
    none = "none"
    dense = "dense"


@dataclass
class TraceConfig(WorkloadConfig):
    path: str
    format: str  # auto (from the file name) or one of mmnsim.TRACE_FORMATS
    keep_instructions: bool  # lackey: replay instruction fetches too
    collapse: bool  # merge consecutive accesses to one page into one
    remap: Remap
    offset: int
    scale: float
    fit: bool
    loop: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.format in ("auto", *TRACE_FORMATS), f"format must be auto or one of {', '.join(TRACE_FORMATS)}")
        require(self.scale > 0, f"scale must be > 0, got {self.scale}")
        require(not (self.loop and self.accesses == 0), "accesses must be > 0 when loop is true")
        try:  # before any job starts: a missing or unreadable trace is a config error
            probe(Path(self.path).expanduser(), self.format)
        except TraceError as exc:
            raise ConfigError(f"path: {exc}") from None


class Trace(Workload):
    name = "trace"
    Config = TraceConfig
    runs_to_end = True  # with accesses: 0, the stream lasts as long as the trace

    def __init__(self, cfg: TraceConfig, npages: int, rng: np.random.Generator):
        super().__init__(cfg, npages, rng)
        self.path = Path(cfg.path).expanduser()
        if not self.path.is_file():
            raise TraceError(f"workload.path: no trace file at {self.path}")
        self.base, self.factor = float(cfg.offset), float(cfg.scale)
        if cfg.fit:
            lo, hi = np.inf, -np.inf
            for pages, _, _ in self._trace_pages():
                lo, hi = min(lo, pages.min()), max(hi, pages.max())
            self.base, self.factor = float(lo), npages / (float(hi) - float(lo) + 1)
        self._reader = self._chunks()
        self._pages = np.zeros(0, dtype=np.int32)
        self._writes: np.ndarray | None = None

    def _trace_pages(self):
        """(pages, writes, index of the first) per chunk, renumbered and collapsed as configured."""
        densify = Densifier() if self.cfg.remap is Remap.dense else None
        collapse = Collapser() if self.cfg.collapse else None
        for chunk in read_trace(self.path, self.cfg.format, keep_instructions=self.cfg.keep_instructions):
            pages, writes = chunk.pages, chunk.writes
            if densify is not None:
                pages = densify(pages)
            if collapse is not None:
                pages, writes = collapse(pages, writes)
            yield pages, writes, chunk.first

    def _chunks(self):
        """(pages in the mm, writes) per chunk."""
        shift = self.factor == 1.0 and self.base == int(self.base)
        for pages, writes, first in self._trace_pages():
            mapped = np.empty(pages.size, dtype=np.int32)
            if shift:
                at = _shift(pages, int(self.base), self.npages, mapped)
            else:
                at = _scale(pages, self.base, self.factor, self.npages, mapped)
            if at >= 0:
                if shift:  # in Python's integers: a page past 2**53 stays exact
                    page = int(pages[at]) - int(self.base)
                else:  # as _first_outside finds it
                    page = int(np.floor((float(pages[at]) - self.base) * self.factor))
                raise TraceError(
                    f"{self.path}: record {first + at}: trace page {int(pages[at])} maps to page "
                    f"{page}, outside the {self.npages} pages of the mm; set workload.offset and "
                    "workload.scale, or workload.fit: true"
                )
            yield mapped, writes

    def _refill(self) -> bool:
        chunk = next(self._reader, None)
        if chunk is None:
            if not self.cfg.loop:
                return False
            self._reader = self._chunks()
            chunk = next(self._reader)
        self._pages, self._writes = chunk
        return True

    def pages(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The next ``n`` accesses (fewer when the trace ends) and their write flags, if it has them."""
        parts, writes = [], []
        while n:
            if self._pages.size == 0 and not self._refill():
                break
            k = min(n, self._pages.size)
            parts.append(self._pages[:k])
            writes.append(self._writes[:k] if self._writes is not None else None)
            self._pages = self._pages[k:]
            self._writes = self._writes[k:] if self._writes is not None else None
            n -= k
        if not parts:
            return np.zeros(0, dtype=np.int32), None
        if len(parts) == 1:  # the common case: a slice of one chunk, no copy
            return parts[0], writes[0]
        if any(w is None for w in writes):
            return np.concatenate(parts), None
        return np.concatenate(parts), np.concatenate(writes)


# Map a chunk's trace pages into the mm: ``out[i] = page i's number in the mm``. Returns the index of the
# first record that falls outside the mm, or -1. The loops have no early exit, so that they vectorize;
# only a chunk that has a bad record is looked at again, to find it.


@njit(cache=True)
def _shift(pages, base, npages, out):
    outside = False
    for i in range(pages.size):
        page = np.int64(pages[i]) - base
        outside |= np.uint64(page) >= np.uint64(npages)  # a negative page turns huge: one test for both ends
        out[i] = page
    return _first_outside(out, pages, base, 1.0, npages) if outside else -1


@njit(cache=True)
def _scale(pages, base, factor, npages, out):
    outside = False
    for i in range(pages.size):
        page = np.floor((np.float64(pages[i]) - base) * factor)
        outside |= (page < 0) | (page >= npages)
        out[i] = np.int32(page) if page >= 0 and page < npages else 0
    return _first_outside(out, pages, base, factor, npages) if outside else -1


@njit(cache=True)
def _first_outside(out, pages, base, factor, npages):
    for i in range(pages.size):
        page = np.floor((np.float64(pages[i]) - base) * factor)
        if page < 0 or page >= npages:
            return i
    return -1


@hookimpl
def register_components():
    return [Trace]
