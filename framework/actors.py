"""Who is running, and who last changed each page: what the invariant checks name as a violation's culprit.

``Actors.current`` is the stack of what runs now: a host policy's hook (``policy 'swap' in reclaim``), a
secondary MMU's notifier op, an mm operation (``munmap of mm 'guest0'``). The hook-call wrappers and the
mm operations push onto it (``acting``). Every PTE change made under an invalidation (``MM.invalidate``)
records, for each page it covers, who made it (``record``); a check that finds a page, frame or entry
wrong asks ``who_changed`` for the page's last recorded change. The cost is two int32 stores per page
invalidated, in one compiled loop, and nothing on the access path.
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
        self.changed_by = np.full(keys, -1, dtype=np.int32)  # per page key: index into _labels, or -1
        self.changed_at = np.zeros(keys, dtype=np.int32)  # per page key: the tick of that change

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
        _record(self.changed_by, self.changed_at, base, start, end, i, tick)

    def who_changed(self, key: int) -> str | None:
        """Who last changed page ``key`` under an invalidation, and at which tick; None if nothing did."""
        i = int(self.changed_by[key])
        return None if i < 0 else f"{self._labels[i]} at tick {int(self.changed_at[key])}"


@kernel
def _record(changed_by, changed_at, base, start, end, who, tick):
    for r in range(start.size):
        if r + AHEAD < start.size:  # reclaim's one-page ranges are far apart
            prefetch(changed_by, U(base + start[r + AHEAD]))
            prefetch(changed_at, U(base + start[r + AHEAD]))
        for k in range(base + start[r], base + end[r]):
            changed_by[k] = who
            changed_at[k] = tick
