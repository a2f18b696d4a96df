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

from .components import Component, Mode
from .hookspecs import hookimpl
from .mm import unpin_frames
from .notifier import NotifierRange, PluginError, expand_ranges, sum_per_range
from .pagebits import PTE_NONE, S_ACCESSED, S_PINNED, clear_mask

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
        pages = expand_ranges(start, end)
        entries = self.spte[pages]
        mapped = entries >= 0
        pinned = mapped & ((self.sflags[pages] & S_PINNED) != 0)
        if pinned.any():
            host = self.sim.host
            unpin_frames(host.ft, host.ctr, entries[pinned])
        self.spte[pages] = PTE_NONE
        self.sflags[pages] = 0
        zapped = sum_per_range(start, end, mapped)
        self.metrics["pages_zapped"] += float(mapped.sum())
        return zapped

    def harvest_accessed(self, start: np.ndarray, end: np.ndarray, clear: bool) -> np.ndarray:
        """Whether any mapped entry in each range has its accessed bit set; clear the bits if asked."""
        pages = expand_ranges(start, end)
        bits = self.sflags[pages]
        young = sum_per_range(start, end, (bits & S_ACCESSED) != 0) > 0
        if clear:
            self.sflags[pages] = bits & clear_mask(S_ACCESSED)
        return young

    def mapped_pages(self) -> int:
        return int(np.count_nonzero(self.spte >= 0))

    @hookimpl
    def collect_metrics(self, sim: "Simulation") -> dict[str, float]:
        return dict(self.metrics)
