"""A one-line progress bar on a terminal, for long single runs (``mmnsim`` without ``-m``)."""

import sys
import time
from typing import TextIO


class ProgressBar:
    """Call with the fraction done; redraws at most every ``interval`` seconds. Draws nothing unless
    ``stream`` is a terminal, so logs and pipes stay clean."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30, interval: float = 0.25):
        self.stream, self.width, self.interval = stream, width, interval
        self.enabled = stream.isatty()
        self.start: tuple[float, float] | None = None  # (time, fraction) at the first call: setup excluded
        self.last = 0.0
        self.drawn = False

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = (now, fraction)
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * self.width)
        t0, f0 = self.start
        elapsed = now - t0
        rate = (fraction - f0) / elapsed if elapsed > 0 else 0.0
        eta = f", {(1 - fraction) / rate:.0f} s left" if rate > 0 else ""
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {fraction:6.1%} ({elapsed:.0f} s{eta})  ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * (self.width + 40) + "\r")
            self.stream.flush()
