"""Workloads: the sequence of page numbers a client accesses, batch by batch.

A workload plugin subclasses ``Workload`` and implements ``pages(n)``, the next ``n`` page numbers of its
pattern (or a ``(pages, writes)`` pair, if it knows which accesses write). The framework adds what every
workload shares (``WorkloadConfig``): the number of accesses, the fraction that are writes, and an
optional guest boot pass first, one write to every page in order, as a 64-bit guest kernel touches all of
its memory through the direct map at boot. A workload with an end (a trace) sets ``runs_to_end``: with
``accesses: 0`` it runs until ``pages`` returns fewer than asked.

Randomness comes only from the ``rng`` each workload is given (a numpy Generator derived from the run's
seed), so a run is determined by its config. Write flags, and zipf's draws, are that Generator's numbers
drawn in numba (``mmnsim.pcg64``): the same values numpy would give, faster.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .arguments import OperationError, access_pages
from .components import Component
from .config import require
from .pcg64 import random_below


@dataclass
class WorkloadConfig:
    """Keys every ``conf/workload/*.yaml`` has; a workload's own Config extends it."""

    name: str
    accesses: int  # accesses after the boot pass
    write_fraction: float
    boot: bool  # touch every page once before the pattern starts
    boot_writes: bool  # the boot touch is a write (else a read: the page stays zero-filled)
    start_tick: int  # the client starts at this tick (it has nothing to do before)

    def __post_init__(self) -> None:
        require(self.start_tick >= 0, f"start_tick must be >= 0, got {self.start_tick}")
        require(self.accesses >= 0, f"accesses must be >= 0, got {self.accesses}")
        require(0.0 <= self.write_fraction <= 1.0, f"write_fraction must be in [0, 1], got {self.write_fraction}")


_UNTIL_THE_END = 2**62
PAGE_DTYPE = np.int32  # page numbers in access batches (an mm has fewer than 2**31 pages)


class Workload(Component):
    kind = "workload"
    runs_to_end: ClassVar[bool] = False  # accesses: 0 means "until pages() runs dry", not "none"

    def __init__(self, cfg: Any, npages: int, rng: np.random.Generator):
        self.cfg = cfg
        self.npages = npages
        self.rng = rng

    def pages(self, n: int) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        """The next ``n`` page numbers, each in ``[0, npages)`` (any integer dtype; int32 avoids a copy);
        or a (pages, writes) pair, writes a bool per page or None. Fewer than ``n`` ends the stream."""
        raise NotImplementedError(f"workload {self.name!r} does not implement pages()")


class WorkloadStream:
    """Feeds a client: the boot pass, then the workload's pages with write flags, in batches."""

    def __init__(self, workload: Workload):
        self.workload = workload
        cfg = workload.cfg
        self.boot_left = workload.npages if cfg.boot else 0
        self.boot_next = 0
        self.left = int(cfg.accesses) if cfg.accesses or not workload.runs_to_end else _UNTIL_THE_END
        self.total = self.boot_left + self.left if self.left != _UNTIL_THE_END else None  # None: unknown

    @property
    def done(self) -> bool:
        return self.boot_left == 0 and self.left == 0

    @property
    def issued(self) -> int:
        """Accesses handed out so far (boot pass included)."""
        if self.total is None:
            return self.boot_next
        return self.total - self.boot_left - self.left

    def next_batch(self, n: int, tick: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        if self.done or tick < self.workload.cfg.start_tick:
            return None
        parts, writes = [], []
        if self.boot_left:
            k = min(n, self.boot_left)
            parts.append(np.arange(self.boot_next, self.boot_next + k, dtype=PAGE_DTYPE))
            writes.append(np.full(k, self.workload.cfg.boot_writes, dtype=np.bool_))
            self.boot_next += k
            self.boot_left -= k
            n -= k
        if n and self.left:
            k = min(n, self.left)
            got = self.workload.pages(k)
            pages, flags = got if isinstance(got, tuple) else (got, None)
            try:  # checked before any cast to int32: a page number too big for it must not wrap around
                pages = access_pages(pages, self.workload.npages, "pages()", copy=False)
            except OperationError as exc:
                raise ValueError(f"workload {self.workload.name!r} returned pages outside [0, {self.workload.npages}) "
                                 f"or not page numbers ({exc})") from None  # fmt: skip
            if pages.size > k:
                raise ValueError(
                    f"workload {self.workload.name!r} returned {pages.size} pages, more than the {k} asked for"
                )
            if flags is None:
                wf = self.workload.cfg.write_fraction
                rng = self.workload.rng
                flags = random_below(rng, pages.size, wf) if wf else np.zeros(pages.size, bool)
            flags = np.ascontiguousarray(flags, dtype=np.bool_)
            if flags.shape != pages.shape:
                raise ValueError(
                    f"workload {self.workload.name!r} returned {flags.shape} write flags for {pages.shape} pages"
                )
            parts.append(pages)
            writes.append(flags)
            self.left = 0 if pages.size < k else self.left - k
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0], writes[0]
        return np.concatenate(parts), np.concatenate(writes)
