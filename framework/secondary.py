"""The base of every secondary MMU plugin: the table it owns, and the helpers its notifier ops use.

The framework's access kernel reads and writes the table directly (a hit sets ``S_ACCESSED``; a fault
installs an entry, pinning its frame in pin mode); the plugin's Python runs per batch, in its notifier
ops. A plugin subclass sets ``name``, ``young`` and ``Config``, and implements the ``NotifierOps`` it
needs with ``@hookimpl`` methods, usually built from ``begin_invalidate``/``zap``/``end_invalidate`` and
``harvest_accessed``.

``state`` holds what the fault path checks before installing an entry, KVM's pair:
``state[SEQ]`` (mmu_invalidate_seq: bumped when an invalidation ends) and ``state[IN_PROGRESS]``
(mmu_invalidate_in_progress: non-zero between start and end). A fault that began before an invalidation
ended, or runs while one is in progress, is retried. A plugin that forgets ``begin_invalidate`` /
``end_invalidate`` lets stale entries in, and the coherence check reports it.
"""

from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numba import njit

from . import counters as C
from .components import Component, Mode
from .frames import ORPHAN, free_frame
from .hookspecs import hookimpl
from .notifier import NotifierRange, PluginError
from .pagebits import PTE_NONE, S_ACCESSED, S_PINNED

if TYPE_CHECKING:
    from .simulation import Simulation, Tenant

# Layout of SecondaryMMU.state.
SEQ, IN_PROGRESS, MODE = range(3)
# Bits of state[MODE].
SEC_PIN = 1  # install entries with a long-term pin
SEC_YOUNG = 2  # accesses through this MMU are visible to reclaim (it implements the young ops)


class SecondaryMMU(Component):
    kind = "secondary"
    young: ClassVar[bool] = False  # True if the plugin reports accessed bits through the young ops

    def __init__(self, sim: "Simulation", tenant: "Tenant", cfg: Any):
        self.sim = sim
        self.tenant = tenant
        self.mm = tenant.mm
        self.cfg = cfg
        self.spte = np.full(self.mm.npages, PTE_NONE, dtype=np.int32)
        self.sflags = np.zeros(self.mm.npages, dtype=np.uint8)
        self.state = np.zeros(3, dtype=np.int64)
        self.state[MODE] = (SEC_PIN if self.pin_mode else 0) | (SEC_YOUNG if self.young else 0)
        self.metrics: dict[str, float] = defaultdict(float)
        self.stall_ns = 0.0  # client time lost to this MMU's own work (flush IPIs); drained each tick

    @property
    def label(self) -> str:
        return f"{self.name}[{self.mm.name}]"

    @property
    def pin_mode(self) -> bool:
        return self.cfg.mode is Mode.pin

    @property
    def fault_ns(self) -> float:
        """Cost of one secondary fault beyond the primary fault path (VM exit and handling, ...)."""
        return float(self.cfg.fault_ns)

    def attach(self) -> None:
        """Start mapping the mm: in notifier mode, subscribe to its chain (mmu_notifier_register)."""
        if not self.pin_mode:
            self.mm.chain.subscribe(self)

    def teardown(self) -> None:
        """The device goes away: drop every entry (and pin), and leave the chain."""
        self.zap(np.array([0]), np.array([self.mm.npages]))
        self.mm.chain.unsubscribe(self)

    def invalidate_self(self, ranges: "NotifierRange") -> None:
        """Deliver ``ranges`` to this MMU alone, through its own notifier ops, whatever its mode.

        For policies that act on one device rather than on the mm (eager release).
        """
        start = getattr(self, "invalidate_range_start", None)
        end = getattr(self, "invalidate_range_end", None)
        if start is None:
            raise PluginError(f"secondary MMU '{self.label}' implements no invalidate_range_start")
        start(ranges)
        if end is not None:
            end(ranges)

    # -- helpers for NotifierOps implementations --

    def begin_invalidate(self) -> None:
        self.state[IN_PROGRESS] += 1

    def end_invalidate(self) -> None:
        self.state[IN_PROGRESS] -= 1
        self.state[SEQ] += 1

    def zap(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Drop the entries in each range, releasing their pins; return entries dropped per range."""
        zapped = np.empty(start.size, dtype=np.int64)
        host = self.sim.host
        _zap(self.spte, self.sflags, _int64(start), _int64(end), host.ft, host.ctr, zapped)
        self.metrics["pages_zapped"] += float(zapped.sum())
        return zapped

    def harvest_accessed(self, start: np.ndarray, end: np.ndarray, clear: bool) -> np.ndarray:
        """Whether any entry in each range has its accessed bit set; clear the bits if asked."""
        young = np.empty(start.size, dtype=np.bool_)
        _harvest(self.sflags, _int64(start), _int64(end), clear, young)
        return young

    def mapped_pages(self) -> int:
        return int(np.count_nonzero(self.spte >= 0))

    @hookimpl
    def collect_metrics(self, sim: "Simulation") -> dict[str, float]:
        return dict(self.metrics)


def _int64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


@njit(cache=True)
def _zap(spte, sflags, start, end, ft, ctr, zapped):
    fkey, ftoken, fpin, node, lists, pb, bits = ft.key, ft.token, ft.pin, ft.node, ft.lists, ft.pb, ft.bits
    for r in range(start.size):
        count = 0
        for p in range(start[r], end[r]):
            f = spte[p]
            if f < 0:
                continue
            if sflags[p] & S_PINNED:  # unpin_user_page: an orphan whose last pin goes is freed
                fpin[f] -= 1
                ctr[C.PINS_RELEASED] += 1
                if fpin[f] == 0 and fkey[f] == ORPHAN:
                    free_frame(node, lists, pb, bits, fkey, ftoken, f)
            spte[p] = PTE_NONE
            sflags[p] = 0
            count += 1
        zapped[r] = count


@njit(cache=True)
def _harvest(sflags, start, end, clear, young):
    for r in range(start.size):
        seen = False
        for p in range(start[r], end[r]):
            if sflags[p] & S_ACCESSED:
                seen = True
                if clear:
                    sflags[p] &= ~S_ACCESSED
        young[r] = seen
