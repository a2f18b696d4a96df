"""One sweep per directory at a time, and no sweep workers outliving their sweep.

``SweepLock`` is a file in the sweep directory, ``.mmnsim.lock``, holding the pid, host and start time of
the sweep using it, and kept locked (``flock``) while the sweep runs. The kernel drops an flock when its
process dies however it dies, so a lock file left by a killed sweep is stale and the next sweep takes it
over; a live sweep's lock stops a second one at once (``SweepBusy``), naming the directory and the pid.
(flock works on local file systems and on NFS since Linux 2.6.12, where it is an fcntl lock.)

``exit_with_parent`` ends a sweep's worker process when the sweep's process is gone (kill -9 leaves joblib's
loky workers running their jobs to the end, then idling for minutes): a daemon thread watches the parent.
"""

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from .output import make_dir

LOCK = ".mmnsim.lock"
SWEEP_PID = "MMNSIM_SWEEP_PID"  # set by the sweep for its workers: the pid they must not outlive


class SweepBusy(Exception):
    """Another live process holds the sweep directory's lock."""


class SweepLock:
    """The lock of one sweep directory: ``acquire`` it before the first job, ``release`` it after the last."""

    def __init__(self, sweep_dir: Path, what: str = "sweep") -> None:
        self.path = Path(sweep_dir) / LOCK
        self.what = what  # "sweep", or "run": a single run locks its directory too
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise SweepBusy naming the holder; OSError if the directory cannot be written."""
        make_dir(self.path.parent)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise SweepBusy(
                    f"{self.path.parent} is in use by another {holder.get('what', 'sweep')} (pid "
                    f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}); "
                    f"wait for it to end, or use another hydra.{'run' if self.what == 'run' else 'sweep'}.dir"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder released it (and removed the file) while we opened it: try again
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "what": self.what}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd

    def started_ns(self) -> int:
        """The lock file's modification time (the file system's clock, as for the jobs' files)."""
        return os.fstat(self.fd).st_mtime_ns if self.fd is not None else time.time_ns()

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):  # the directory went read-only or away: the flock is what counts
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # drops the flock
        self.fd = None


def holder_if_locked(path: Path) -> dict | None:
    """Who holds the lock file ``path`` (its record) if a live process does; None if nobody does (no file, or
    a stale one left by a process that died)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # drops the shared lock, if it was taken
    return None


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def exit_with_parent(poll_seconds: float = 0.5) -> None:
    """In a sweep's worker process (a child of the process that set SWEEP_PID), start a daemon thread that
    exits the process when that parent is gone. Elsewhere (a single run, Ray or SLURM workers, whose parent
    is not the sweep) it does nothing. Started once per process."""
    sweep_pid = os.environ.get(SWEEP_PID)
    if sweep_pid is None or os.getppid() != int(sweep_pid) or _watchdog.is_set():
        return
    _watchdog.set()
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # re-parented (to init or a subreaper) once the parent died
            time.sleep(poll_seconds)
        os._exit(1)  # no cleanup: the job's files are written atomically; a half-done job reruns on resume

    threading.Thread(target=watch, name="mmnsim-exit-with-parent", daemon=True).start()


_watchdog = threading.Event()
