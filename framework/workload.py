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

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .arguments import OperationError, access_pages
from .components import Component
from .config import require
from .pcg64 import random_below

if TYPE_CHECKING:
    from .settings import TenantSpec


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
_DRAWER: ThreadPoolExecutor | None = None


def _drawer() -> ThreadPoolExecutor:
    """The thread that draws batches ahead (one per process: the simulation runs one tick at a time)."""
    global _DRAWER
    if _DRAWER is None:
        _DRAWER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmnsim-draw")
    return _DRAWER


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
    """Feeds a client: the boot pass, then the workload's pages with write flags, in batches.

    ``ahead``: draw each next batch on a second thread while the simulation runs the current one (the compiled
    kernels release the GIL), so that on a machine with a core to spare drawing costs no time. The batches are
    the same, in the same order: the stream is asked the same calls either way, only earlier."""

    def __init__(self, workload: Workload, ahead: bool = False):
        self.workload = workload
        cfg = workload.cfg
        self.boot_left = workload.npages if cfg.boot else 0
        self.boot_next = 0
        self.left = int(cfg.accesses) if cfg.accesses or not workload.runs_to_end else _UNTIL_THE_END
        self.total = self.boot_left + self.left if self.left != _UNTIL_THE_END else None  # None: unknown
        self.ahead = ahead
        self._drawn: tuple[tuple[int, int], Future] | None = None  # the next batch, drawn for (n, tick)
        self._handed = 0  # accesses handed to the simulation

    @property
    def done(self) -> bool:
        return self.boot_left == 0 and self.left == 0 and self._drawn is None

    @property
    def issued(self) -> int:
        """Accesses handed out so far (boot pass included)."""
        return self._handed

    def next_batch(self, n: int, tick: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """The accesses of tick ``tick``, at most ``n``, or None if the stream has none for it."""
        drawn, self._drawn = self._drawn, None
        batch = drawn[1].result() if drawn is not None and drawn[0] == (n, tick) else None
        if drawn is None or drawn[0] != (n, tick):
            if drawn is not None:  # asked for something else than what was drawn (not the simulation's way)
                raise RuntimeError(f"workload stream drawn ahead for {drawn[0]}, asked for {(n, tick)}")
            batch = self._draw(n, tick)
        if batch is not None:
            self._handed += batch[0].size
        if self.ahead and not (self.boot_left == 0 and self.left == 0):
            self._drawn = ((n, tick + 1), _drawer().submit(self._draw, n, tick + 1))
        return batch

    def _draw(self, n: int, tick: int) -> tuple[np.ndarray, np.ndarray] | None:
        if (self.boot_left == 0 and self.left == 0) or tick < self.workload.cfg.start_tick:
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


def client_streams(
    seed: int, tenants: "Sequence[TenantSpec]", ahead: bool = False
) -> tuple[list[list[WorkloadStream]], np.random.Generator]:
    """Every client's access stream, as a run of ``seed`` issues them, and the generator left for host
    policies. The one place streams are made: the simulator and the real twin (``backend=real``) both call
    it, so the two replay the identical access sequence.

    The run's SeedSequence is spawned once per tenant and once more for the policies (the last child); a
    tenant with several clients spawns its child again, one per client (its CPUs first, then its devices);
    a tenant with one client uses its child directly. Each client's workload covers its region of the mm.
    ``ahead``: the streams draw each next batch on a second thread (``WorkloadStream``)."""
    from .notifier import guarded  # (notifier imports what imports this module)

    seeds = np.random.SeedSequence(seed).spawn(len(tenants) + 1)
    streams = []
    for spec, tenant_seed in zip(tenants, seeds, strict=False):
        if len(spec.clients) > 1:
            rngs = [np.random.default_rng(s) for s in tenant_seed.spawn(len(spec.clients))]
        else:
            rngs = [np.random.default_rng(tenant_seed)]
        streams.append([
            WorkloadStream(guarded([], f"workload '{c.workload[0].name}'", "__init__", c.workload[0], c.workload[1],
                                   c.region[1] - c.region[0], rng), ahead=ahead)
            for c, rng in zip(spec.clients, rngs, strict=True)
        ])  # fmt: skip
    return streams, np.random.default_rng(seeds[-1])
