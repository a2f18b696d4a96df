"""Who is running, and who last changed each page: what the invariant checks name as a violation's culprit.

``Actors.current`` is the stack of what runs now: a host policy's hook (``policy 'swap' in reclaim``), a
secondary MMU's notifier op, an mm operation (``munmap of mm 'guest0'``). The hook-call wrappers and the
mm operations push onto it (``acting``). Every PTE change made under an invalidation (``MM.invalidate``)
records, for each page it covers, who made it (``record``); a check that finds a page, frame or entry
wrong asks ``who_changed`` for the page's last recorded change. Each change is an event (who, at which
tick) in a log, one per invalidation batch; each page keeps the int32 index of its last event: one store
per page invalidated, in one compiled loop, 4 bytes per page, and nothing on the access path.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .kernel import AHEAD, U, kernel, prefetch

FRAMEWORK = "the framework"


class Actors:
    def __init__(self, keys: int):
        self.running: list[str] = []  # the stack; the notifier chain pushes and pops it directly
        self._labels: list[str] = []
        self._ids: dict[str, int] = {}
        self._changed = np.full(keys, -1, dtype=np.int32)  # per page key: its last event, or -1
        self._events = np.zeros((256, 2), dtype=np.int64)  # per event: (index into _labels, tick); grows
        self._nevents = 0
        self._last = (-1, -1)  # the last event's (label, tick)

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
        label = f"{self.current} ({what})"
        i = self._ids.get(label)
        if i is None:
            i = self._ids[label] = len(self._labels)
            self._labels.append(label)
        if (i, tick) != self._last:  # a new event (the same actor within a tick keeps its event)
            n = self._nevents
            if n == len(self._events):
                self._events = np.concatenate([self._events, np.zeros_like(self._events)])
            self._events[n] = i, tick
            self._nevents = n + 1
            self._last = (i, tick)
        _record(self._changed, base, start, end, self._nevents - 1)

    def who_changed(self, key: int) -> str | None:
        """Who last changed page ``key`` under an invalidation, and at which tick; None if nothing did."""
        event = int(self._changed[key])
        if event < 0:
            return None
        who, tick = (int(x) for x in self._events[event])
        return f"{self._labels[who]} at tick {tick}"


@kernel
def _record(changed, base, start, end, event):
    for r in range(start.size):
        if r + AHEAD < start.size:  # reclaim's one-page ranges are far apart
            prefetch(changed, U(base + start[r + AHEAD]))
        for k in range(base + start[r], base + end[r]):
            changed[k] = event
