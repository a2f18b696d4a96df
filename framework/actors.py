"""Who is running, and who last changed each page: what the invariant checks name as a violation's culprit.

``Actors.current`` is the stack of what runs now: a host policy's hook (``policy 'swap' in reclaim``), a
secondary MMU's notifier op, an mm operation (``munmap of mm 'guest0'``). The hook-call wrappers and the
mm operations push onto it (``acting``). Every PTE change made under an invalidation (``MM.invalidate``)
records, for each page it covers, who made it (``record``); a check that finds a page, frame or entry
wrong asks ``who_changed`` for the page's last recorded change. The cost is one int64 store per page
invalidated (who and when, packed), in one compiled loop, and nothing on the access path.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .kernel import AHEAD, U, kernel, prefetch

FRAMEWORK = "the framework"
WHO_BITS = 24  # up to 16 million distinct actor labels; the tick takes the other 39 bits
WHO_MASK = (1 << WHO_BITS) - 1


class Actors:
    def __init__(self, keys: int):
        self.running: list[str] = []  # the stack; the notifier chain pushes and pops it directly
        self._labels: list[str] = []
        self._ids: dict[str, int] = {}
        # Per page key: tick << WHO_BITS | index into _labels, or -1. One array, not two: reclaim's pages
        # lie far apart, and each store is a cache miss.
        self.changed = np.full(keys, -1, dtype=np.int64)

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
        _record(self.changed, base, start, end, (tick << WHO_BITS) | i)

    def who_changed(self, key: int) -> str | None:
        """Who last changed page ``key`` under an invalidation, and at which tick; None if nothing did."""
        packed = int(self.changed[key])
        if packed < 0:
            return None
        return f"{self._labels[packed & WHO_MASK]} at tick {packed >> WHO_BITS}"


@kernel
def _record(changed, base, start, end, packed):
    for r in range(start.size):
        if r + AHEAD < start.size:  # reclaim's one-page ranges are far apart
            prefetch(changed, U(base + start[r + AHEAD]))
        for k in range(base + start[r], base + end[r]):
            changed[k] = packed
