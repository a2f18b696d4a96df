"""What a run or a sweep shows while it works.

* ``ProgressBar``: a single run's bar (tqdm) on stderr, only on a terminal: never in a log, a pipe or a
  sweep's job.
* ``CompileNotice``: one line when numba starts compiling the kernels (the first run after installing
  or editing mmnsim, about half a minute), and how long it took, which the run's speed figure leaves out.
* ``SweepProgress``: a sweep's view, from its own process: a bar across jobs (done, running, failed,
  time left) on a terminal, one line per finished job with the overrides that tell it apart, in job
  order, and the outcome of every job for the closing line. It watches the sweep directory: each job
  ends by writing ``.mmnsim-job.json`` (``write_job_status``), so it works the same for any launcher
  whose jobs write into a directory this process sees.
"""

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numba
import yaml
from numba.core import event
from tqdm import tqdm

from .resultdir import JOB_STATUS, job_dirs

COMPILING = ("compiling the numba kernels: the first run after installing or editing mmnsim takes about half a "
             "minute longer (more on a busy machine); later runs load them from the cache")  # fmt: skip


class ProgressBar:
    """Call with the fraction done. Draws a bar on ``stream`` only if it is a terminal, from the first
    call on (so its rate and time left leave the setup out)."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 0.25):
        self.stream, self.interval = stream, interval  # redrawn at most every interval seconds
        self.enabled = stream.isatty()
        self.bar: tqdm | None = None

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=1000, file=self.stream, leave=False, mininterval=self.interval,
                            bar_format="{percentage:5.1f}% |{bar}| {elapsed} elapsed, {remaining} left")  # fmt: skip
        self.bar.update(round(min(max(fraction, 0.0), 1.0) * 1000) - self.bar.n)

    def write(self, line: str) -> None:
        """A line on the stream, above the bar if one is drawn."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # leave=False: the bar is wiped, the run's summary takes its place


class CompileNotice(event.Listener):
    """Listens to numba's compile events (fired only when a kernel is compiled, not when it is loaded from
    the cache): ``say`` the first time, and add up the seconds spent (nested compiles counted once)."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.seconds = 0.0
        self._depth = 0
        self._started = 0.0
        self._said = False

    def on_start(self, ev: event.Event) -> None:
        self._depth += 1
        if self._depth == 1:
            self._started = time.perf_counter()
            if not self._said:
                self._said = True
                self.say(COMPILING)

    def on_end(self, ev: event.Event) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> "CompileNotice":
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc: object) -> None:
        event.unregister("numba:compile", self)


def kernels_cached() -> bool:
    """Whether numba's cache holds compiled kernels for this version of mmnsim (``mmnsim._numba_cache``)."""
    cache = Path(numba.config.CACHE_DIR or "")
    return bool(numba.config.CACHE_DIR) and any(cache.rglob("*.nbi"))


def write_job_status(outdir: Path, **fields: object) -> None:
    """A sweep's job says how it ended (``status``: ok, up to date, violations or failed, and details). If
    it cannot (a full disk), the sweep tells from the job's other files (``_outcome_from_files``)."""
    from .output import write_bytes_atomic

    with contextlib.suppress(OSError):
        write_bytes_atomic(json.dumps(fields).encode(), outdir / JOB_STATUS)


@dataclass
class JobOutcome:
    num: int  # the job's number (its directory's name, by default)
    job_dir: Path
    overrides: list[str]
    status: str  # ok, up to date, violations, failed, unfinished
    detail: dict

    def text(self) -> str:
        d = self.detail
        if self.status == "up to date":
            return "up to date (same config and code), not run again"
        if self.status == "failed":
            return f"failed: {d.get('error', '?')}"
        if self.status == "unfinished":
            return "no results and no failed.json (see the job's log)"
        compiling = d.get("compile_seconds") or 0
        took = f"done in {d.get('seconds', 0):.1f} s" + (
            f", {compiling:.0f} s of it compiling" if compiling >= 1 else ""
        )
        if self.status == "violations":
            return f"{took}; {d.get('violations', 0):,} invariant violations (first: {d.get('first', '?')})"
        return took


class SweepProgress:
    """Watches a sweep's jobs from the sweep's process (``start``, then ``stop`` at the end of the sweep)."""

    def __init__(self, sweep_dir: Path, jobs: list[list[str]] | None, since_ns: int, label_keys: list[str],
                 paths: list[Path] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                 poll_seconds: float = 0.5):  # fmt: skip
        """``jobs``: each job's overrides, in job order (None: unknown ahead); ``label_keys``: the keys whose
        values tell the jobs apart; ``paths``: the jobs' directories if known ahead (else they are looked
        for under ``sweep_dir``)."""
        self.sweep_dir, self.jobs, self.since_ns, self.paths = sweep_dir, jobs, since_ns, paths
        self.label_keys = label_keys
        self.out, self.err, self.poll_seconds = out, err, poll_seconds
        self.outcomes: dict[int, JobOutcome] = {}
        self.printed: set[int] = set()  # jobs whose line is printed
        self.running = 0
        self.bar: tqdm | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.err.isatty() and self.jobs:
            form = "{n}/{total} jobs |{bar}| {elapsed} elapsed, {remaining} left{postfix}"
            self.bar = tqdm(total=len(self.jobs), file=self.err, unit="job", dynamic_ncols=True, bar_format=form)
        self._thread = threading.Thread(target=self._watch, name="mmnsim-sweep-progress", daemon=True)
        self._thread.start()

    def stop(self) -> list[JobOutcome]:
        """Stop watching; print the lines not printed yet; every job of this sweep's outcome, in job order."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._scan(final=True)
            self._print_ready(final=True)
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        return [self.outcomes[k] for k in sorted(self.outcomes)]

    def abandon(self) -> None:
        """Stop watching and wipe the bar, printing nothing more (the sweep was interrupted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            self.bar.leave = False
            self.bar.close()
            self.bar = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            with self._lock:
                try:
                    self._scan(final=False)
                    self._print_ready(final=False)
                except OSError:  # the directory changing under the scan: the next one sees it
                    continue

    def _fresh(self, path: Path) -> bool:
        try:
            return path.stat().st_mtime_ns >= self.since_ns
        except OSError:
            return False

    def _scan(self, final: bool) -> None:
        started = 0
        for job_dir in self.paths if self.paths is not None else job_dirs(self.sweep_dir):
            overrides_file = job_dir / ".hydra" / "overrides.yaml"
            if not self._fresh(overrides_file):
                continue  # not started yet, or an earlier run's job this one has not started yet
            started += 1
            status_file = job_dir / JOB_STATUS
            if self._fresh(status_file):
                try:
                    detail = json.loads(status_file.read_text())
                except (OSError, ValueError):
                    continue  # being written: the next scan reads it
                self._record(job_dir, detail.get("overrides"), detail.get("num"), detail.get("status", "?"), detail)
            elif final:  # the job ended without saying how (killed): what its files say
                self._record(job_dir, _read_overrides(overrides_file), None, *_outcome_from_files(job_dir, self))
        self.running = max(started - len(self.outcomes), 0)

    def _record(self, job_dir: Path, overrides: list[str] | None, num: int | None, status: str, detail: dict) -> None:
        overrides = list(overrides or [])
        if num is None and self.jobs is not None and overrides in self.jobs:
            num = self.jobs.index(overrides)
        if num is None:
            num = int(job_dir.name) if job_dir.name.isdigit() else len(self.outcomes) + 10**9
        if num not in self.outcomes:
            self.outcomes[num] = JobOutcome(num, job_dir, overrides, status, detail)
            if self.bar is not None:
                self.bar.update(1)

    def _print_ready(self, final: bool) -> None:
        """Lines in job order: a job's once every job before it has one (at the end, all that are left)."""
        if self.jobs is not None and not final:
            ready = []
            k = len(self.printed)  # the jobs printed so far are 0, 1, ..., k-1
            while k in self.outcomes:
                ready.append(k)
                k += 1
        else:
            ready = [k for k in sorted(self.outcomes) if k not in self.printed]
        for k in ready:
            self._print(self.outcomes[k])
            self.printed.add(k)
        if self.bar is not None:
            failed = sum(o.status in ("failed", "unfinished") for o in self.outcomes.values())
            self.bar.set_postfix_str(f"running {self.running}, failed {failed}", refresh=True)  # after ", "

    def _print(self, outcome: JobOutcome) -> None:
        label = " ".join(o for o in outcome.overrides if o.partition("=")[0] in self.label_keys)
        line = f"{outcome.job_dir}: {label or ' '.join(outcome.overrides) or 'no overrides'}: {outcome.text()}"
        stream = self.err if outcome.status in ("failed", "unfinished", "violations") else self.out
        if self.bar is not None:
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)


def _read_overrides(path: Path) -> list[str]:
    try:
        return [str(o) for o in yaml.safe_load(path.read_text()) or []]
    except (OSError, yaml.YAMLError):
        return []


def _outcome_from_files(job_dir: Path, progress: SweepProgress) -> tuple[str, dict]:
    """A job that wrote no status: failed.json or a fresh summary tell how it ended, else it did not finish."""
    from .output import FAILED, SUMMARY

    if progress._fresh(job_dir / FAILED):
        try:
            return "failed", {"error": json.loads((job_dir / FAILED).read_text())["error"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return "failed", {"error": f"failed.json unreadable ({exc})"}
    if progress._fresh(job_dir / SUMMARY):
        return "ok", {}
    return "unfinished", {}
