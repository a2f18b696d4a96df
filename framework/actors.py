"""Who is running, and who last changed each page: what the invariant checks name as a violation's culprit.

``Actors.current`` is the stack of what runs now: a host policy's hook (``policy 'swap' in reclaim``), a
secondary MMU's notifier op, an mm operation (``munmap of mm 'guest0'``). The hook-call wrappers and the
mm operations push onto it (``acting``). Every PTE change made under an invalidation (``MM.invalidate``)
records, for each page it covers, who made it (``record``); a check that finds a page, frame or entry
wrong asks ``who_changed`` for the page's last recorded change. Each change is an event (who, at which
tick) in a log, one per invalidation batch; each page keeps the uint16 index of its last event: one store
per page invalidated, in one compiled loop, 2 bytes per page, and nothing on the access path.

When the log fills (65,534 events), it is compacted: the events no page refers to any more are dropped,
the newest half of those still referred to keep their detail, and older ones merge into one event per
actor, "at or before" the tick of its latest; the pages' indices are rewritten in one pass. An index a
kernel holds across Python calls must be asked for again after ``generation`` moved.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .kernel import AHEAD, U, kernel, prefetch

FRAMEWORK = "the framework"


CAPACITY = 65535  # events the uint16 record can name (0: never changed)


class Actors:
    def __init__(self, keys: int):
        self.running: list[str] = []  # the stack; the notifier chain pushes and pops it directly
        self._labels: list[str] = []
        self._ids: dict[str, int] = {}
        self._changed = np.zeros(keys, dtype=np.uint16)  # per page key: its last event, or 0
        # per event: (index into _labels, tick, 1 if exact or 0 if "at or before"); row 0 is "never"; grows
        self._events = np.zeros((256, 3), dtype=np.int64)
        self._nevents = 1
        self._last = (-1, -1)  # the last event's (label, tick)
        self.generation = 0  # bumped by each compaction, which renumbers the events

    @property
    def current(self) -> str:
        return " → ".join(self.running) if self.running else FRAMEWORK

    @contextmanager
    def acting(self, label: str) -> Iterator[None]:
        """``label`` runs (inside whatever runs already) for the duration of the block."""
        self.running.append(label)
        try:
            yield
        finally:
            self.running.pop()

    def innermost(self, prefix: str) -> str | None:
        """The innermost running actor whose label starts with ``prefix`` (``"policy"``, ``"secondary"``)."""
        return next((a for a in reversed(self.running) if a.startswith(prefix)), None)

    def record(self, base: int, start: np.ndarray, end: np.ndarray, what: str, tick: int) -> None:
        """The current actor changed the pages [start[i], end[i]) of the mm at key ``base``, by ``what``."""
        _record(self._changed, base, start, end, self.event(what, tick))

    def event(self, what: str, tick: int) -> int:
        """The index of the event "the current actor, by ``what``, at ``tick``" in the log, for a compiled
        kernel that records the pages it changes itself (``changed[key] = event``)."""
        label = f"{self.current} ({what})"
        i = self._ids.get(label)
        if i is None:
            i = self._ids[label] = len(self._labels)
            self._labels.append(label)
        if (i, tick) != self._last:  # a new event (the same actor within a tick keeps its event)
            if self._nevents == CAPACITY:
                self._compact()
            n = self._nevents
            if n == len(self._events):
                self._events = np.concatenate([self._events, np.zeros_like(self._events)])
            self._events[n] = i, tick, 1
            self._nevents = n + 1
            self._last = (i, tick)
        return self._nevents - 1

    def who_changed(self, key: int) -> str | None:
        """Who last changed page ``key`` under an invalidation, and at which tick; None if nothing did."""
        event = int(self._changed[key])
        if event == 0:
            return None
        who, tick, exact = (int(x) for x in self._events[event])
        return f"{self._labels[who]} at tick {tick}" if exact else f"{self._labels[who]} at or before tick {tick}"

    def _compact(self) -> None:
        """Make room in a full log (see the module's docstring)."""
        used = np.zeros(CAPACITY, dtype=np.int64)
        _refs(self._changed, used)
        live = np.flatnonzero(used[1 : self._nevents]) + 1  # referred to, oldest first
        keep, merge = live[len(live) // 2 :], live[: len(live) // 2]
        rows = [(0, 0, 1)]
        remap = np.zeros(CAPACITY, dtype=np.uint16)
        for label in np.unique(self._events[merge, 0]).tolist():  # one "at or before" event per actor
            olds = merge[self._events[merge, 0] == label]
            remap[olds] = len(rows)
            rows.append((label, int(self._events[olds, 1].max()), 0))
        remap[keep] = np.arange(len(rows), len(rows) + keep.size)
        rows.extend(map(tuple, self._events[keep].tolist()))
        _renumber(self._changed, remap)
        self._events = np.zeros((max(256, 2 * len(rows)), 3), dtype=np.int64)
        self._events[: len(rows)] = rows
        self._nevents = len(rows)
        self._last = (-1, -1)
        self.generation += 1


@kernel
def _refs(changed, used):
    for k in range(changed.size):
        used[changed[k]] = 1


@kernel
def _renumber(changed, remap):
    for k in range(changed.size):
        changed[k] = remap[changed[k]]


@kernel
def _record(changed, base, start, end, event):
    for r in range(start.size):
        if r + AHEAD < start.size:  # reclaim's one-page ranges are far apart
            prefetch(changed, U(base + start[r + AHEAD]))
        for k in range(base + start[r], base + end[r]):
            changed[k] = event
