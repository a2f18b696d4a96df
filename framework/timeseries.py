"""A run's time series, in bounded memory however many ticks the run has.

Every tick is sampled, but only every k-th is kept: once ``MAX_ROWS`` rows are held, every other one is
dropped and k doubles (so the kept ticks stay evenly spaced: 0, k, 2k, ...). The last tick is always
kept, so the final row equals the summary's counters. A run of up to ``MAX_ROWS`` ticks keeps them all.
"""

MAX_ROWS = 4096  # ~10 MB of rows at ~2.5 KB each


class TimeSeries:
    def __init__(self, max_rows: int | None = None):
        max_rows = MAX_ROWS if max_rows is None else max_rows
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2, got {max_rows}")
        self.max_rows = max_rows
        self.every = 1  # keep ticks that are multiples of this
        self.rows: list[dict[str, float]] = []
        self.last: dict[str, float] | None = None  # the latest tick, kept whether or not it is a multiple

    def add(self, tick: int, row: dict[str, float]) -> None:
        self.last = row
        if tick % self.every:
            return
        self.rows.append(row)
        if len(self.rows) >= self.max_rows:
            self.rows = [r for r in self.rows if r["tick"] % (2 * self.every) == 0]
            self.every *= 2

    def to_list(self) -> list[dict[str, float]]:
        """The kept rows in tick order, the last tick included."""
        if self.last is not None and (not self.rows or self.rows[-1] is not self.last):
            return [*self.rows, self.last]
        return list(self.rows)
