"""One sweep per directory at a time, and no sweep workers outliving their sweep.

``SweepLock`` is a file in the sweep directory, ``.mmnsim.lock``, holding the pid, host and start time of
the sweep using it (and ``what`` holds it: a sweep, or a single run, which locks its run directory the same
way), and kept locked (``flock``) while the sweep runs. The kernel drops an flock when its process dies
however it dies, so a lock file left by a killed sweep is stale and the next sweep takes it over; a live
sweep's lock stops a second one at once (``SweepBusy``), naming the directory and the pid. Whether a lock
file elsewhere is held (``holder_if_locked``) is how a sweep finds a run still writing below it
(``mmnsim.resultdir``). (flock works on local file systems and on NFS since Linux 2.6.12, where it is an
fcntl lock.)

A process that holds the lock can hand it to the sweep it starts (``run_sweep``: ``mmnsim-experiment`` takes
the lock of its sweep directory, clears the directory, runs the sweep and reports it, all under one lock):
the child inherits the locked file descriptor, and its ``acquire`` adopts it instead of waiting for it.
Only the holder removes what is in the directory (``clear``): a second experiment of the same name stops
at the lock, before deleting anything.

``exit_with_parent`` ends a sweep's worker process when the sweep's process is gone (kill -9 leaves joblib's
loky workers running their jobs to the end, then idling for minutes): a daemon thread watches the parent.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .output import make_dir

LOCK = ".mmnsim.lock"
SWEEP_PID = "MMNSIM_SWEEP_PID"  # set by the sweep for its workers: the pid they must not outlive
LOCK_FD = "MMNSIM_SWEEP_LOCK_FD"  # set by a lock's holder for the sweep it starts: the inherited locked fd


class SweepBusy(Exception):
    """Another live process holds the sweep directory's lock."""


class SweepLock:
    """The lock of one sweep directory: ``acquire`` it before the first job, ``release`` it after the last."""

    def __init__(self, sweep_dir: Path, what: str = "sweep") -> None:
        self.path = Path(sweep_dir) / LOCK
        self.what = what  # "sweep", or "run": a single run locks its directory too
        self.fd: int | None = None
        self.inherited = False  # adopted from the process that started this one, which keeps the lock file

    def acquire(self) -> None:
        """Take the lock, or raise SweepBusy naming the holder; OSError if the directory cannot be written."""
        make_dir(self.path.parent)
        if self._adopt():
            return
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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError as exc:  # a full disk: no lock file without its record is left
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self.fd = fd

    def _adopt(self) -> bool:
        """Adopt the lock of this directory that the parent process holds and handed down (``run_sweep``)."""
        try:
            fd = int(os.environ.get(LOCK_FD, ""))
            if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return False
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same open file as the holder's: already held
        except (ValueError, OSError):
            return False
        os.set_inheritable(fd, False)  # the sweep's workers must not keep the lock after it
        self.fd, self.inherited = fd, True
        return True

    def run_sweep(self, command: list[str], env: dict[str, str] | None = None) -> int:
        """Run ``command`` (an ``mmnsim -m`` sweep into the locked directory) handing it the lock: it inherits
        the locked file descriptor and adopts it. Returns its exit status."""
        if self.fd is None:
            raise RuntimeError("run_sweep() needs the lock held")
        env = {**(os.environ if env is None else env), LOCK_FD: str(self.fd)}
        return subprocess.run(command, env=env, pass_fds=[self.fd]).returncode

    def clear(self) -> None:
        """Remove everything in the locked directory but the lock file (only the lock's holder may)."""
        if self.fd is None:
            raise RuntimeError("clear() needs the lock held")
        for entry in self.path.parent.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def started_ns(self) -> int:
        """The lock file's modification time (the file system's clock, as for the jobs' files)."""
        return os.fstat(self.fd).st_mtime_ns if self.fd is not None else time.time_ns()

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent); an adopted lock stays its holder's."""
        if self.fd is None:
            return
        if self.inherited:
            os.close(self.fd)  # the holder's open file keeps the lock
            self.fd = None
            return
        with contextlib.suppress(OSError):  # the directory went read-only or away: the flock is what counts
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # drops the flock
        self.fd = None


@contextlib.contextmanager
def holding(sweep_dir: Path) -> Iterator[SweepLock]:
    """The lock of ``sweep_dir``, held for the ``with`` block (SweepBusy if another process holds it)."""
    lock = SweepLock(sweep_dir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


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
