"""What a run creates on the machine, and its removal on every exit path, the next run's included.

**Names.** Everything a run creates is named ``mmnsim-real-<run id>-<pid>`` (``run_name``): the cgroup
``<memory root>/<name>``, the swap file ``<directory>/<name>.swap``, the tracing instance
``instances/<name>``, and tracefs's mountpoint ``/tmp/<name>.tracefs`` where the run had to mount it. The
pid is the run's own, so a name says whose a resource is and whether its owner still runs.

**Registry.** Before it creates a resource, a run writes it into its record, ``STATE_DIR/<name>.json``
(with its pid, its start time in /proc/PID/stat and the boot id, so a pid reused by another process is not
taken for the run), and removes the record when everything is gone.

**Every exit path.** ``RunResources`` is a context manager: leaving it (normally, by an exception, by
Ctrl-C's KeyboardInterrupt, by SIGTERM or SIGHUP, which it turns into ``RunInterrupted``, or by its time
limit, ``RunTimeout``) removes what the run created, in an order that works: its child processes
(killed and reaped), the tracing instance (its reader closed first), the cgroup, the swap file (swapoff
after the tenants are gone, so nothing has to be read back), tracefs's mountpoint. A signal that arrives
while it cleans up waits until it is done. A stop raised where Python cannot propagate it (in a finalizer,
``__del__``, which prints it as "Exception ignored" and goes on) is raised again in the run's own code, and
one that the run's code swallowed is raised when the run leaves: a stopped run never ends as if it finished.

**SIGKILL.** Nothing runs in a killed process, so the next run cleans up after it: entering
``RunResources`` sweeps (``sweep``) the records whose owner is no longer running, and any resource named
like a run's whose pid is no longer running (found in the memory cgroup root, /proc/swaps, the swap
directory, the tracing instances and the mounts), and removes them. A resource of a run that still
runs is never touched, nor anything not named like a run's. A child process started by a run should call
``die_with_parent`` so that it dies with it (PR_SET_PDEATHSIG).
"""

import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import cgroup, swapfile, tracing
from .errors import HostError

PREFIX = "mmnsim-real"
STATE_DIR = Path("/var/tmp/mmnsim-real/runs")
NAME = re.compile(rf"^{PREFIX}-(?P<run>[A-Za-z0-9_.-]+)-(?P<pid>[1-9][0-9]*)$")
TRACEFS_SUFFIX = ".tracefs"
SWAP_SUFFIX = ".swap"
# The order resources are removed in, whatever order they were made in: a child holds the cgroup and its
# swapped pages, a reader holds the instance, an instance lives on the mount.
KINDS = ("child", "instance", "cgroup", "swapfile", "mount")
RUN_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM})  # handled while a run runs
RESIGNAL_DELAY_S = 0.05  # a stop lost in a finalizer is signalled again this much later, out of the finalizer


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP stopped the run (a KeyboardInterrupt, as Ctrl-C's, so ``except Exception`` lets it
    through)."""


class RunTimeout(RuntimeError):
    """The run went over its time limit."""


# --- names and owners -----------------------------------------------------------------------------------


def run_name(run_id: str, pid: int | None = None) -> str:
    """``mmnsim-real-<run id>-<pid>``; characters other than letters, digits, ``_.-`` become ``_``."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:40] or "run"
    return f"{PREFIX}-{clean}-{os.getpid() if pid is None else pid}"


def owner_pid(name: str) -> int | None:
    """The pid in a run's resource name (suffix removed), or None if the name is not a run's."""
    for suffix in (TRACEFS_SUFFIX, SWAP_SUFFIX):
        name = name.removesuffix(suffix)
    found = NAME.match(name)
    return int(found["pid"]) if found else None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (field 22 of /proc/PID/stat, clock ticks since boot); None if it is gone
    or has exited (a zombie, until its parent or init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def shared_tracefs() -> Path | None:
    """A tracefs mount that is no run's private mountpoint (the machine's own, /sys/kernel/tracing, ...): a run
    that used another run's would keep it busy when that run unmounts it."""
    return next((p for p in tracing.tracefs_mounts() if owner_pid(p.name) is None), None)


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@dataclass(frozen=True)
class Owner:
    pid: int
    start: int | None  # None: unknown (a resource without a record): then any process of that pid counts
    boot: str | None

    def alive(self) -> bool:
        if self.boot is not None and self.boot != boot_id():
            return False
        start = process_start(self.pid)
        return start is not None and (self.start is None or start == self.start)


# --- the record -----------------------------------------------------------------------------------------


@dataclass
class Record:
    """A run's entry in the registry: who it is and what it may have created (written before creating)."""

    name: str
    owner: Owner
    resources: list[dict]
    path: Path

    @classmethod
    def new(cls, name: str, state_dir: Path) -> "Record":
        pid = os.getpid()
        return cls(name, Owner(pid, process_start(pid), boot_id()), [], Path(state_dir) / f"{name}.json")

    @classmethod
    def load(cls, path: Path) -> "Record":
        data = json.loads(path.read_text())
        owner = Owner(data["pid"], data["start"], data["boot"])
        return cls(data["name"], owner, data["resources"], path)

    def add(self, kind: str, **where) -> dict:
        entry = {"kind": kind, **where}
        self.resources.append(entry)
        self.save()
        return entry

    def drop(self, entry: dict) -> None:
        self.resources.remove(entry)
        self.save()

    def save(self) -> None:
        data = {"name": self.name, "pid": self.owner.pid, "start": self.owner.start, "boot": self.owner.boot,
                "resources": self.resources}  # fmt: skip
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)


def remove_resource(entry: dict) -> None:
    """Remove one resource of a run, as its record entry describes it; gone already is fine."""
    kind = entry["kind"]
    if kind == "child":
        kill_child(entry["pid"], entry["start"])
    elif kind == "instance":
        root = Path(entry["root"])
        if root not in tracing.tracefs_mounts():
            root = tracing.find_tracefs()  # its mount is gone; the instance lives on where tracefs is
        if root is not None:
            tracing.remove_instance(root, entry["name"])
    elif kind == "cgroup":
        cgroup.remove_group(Path(entry["path"]))
    elif kind == "swapfile":
        swapfile.remove_swapfile(Path(entry["path"]))
    elif kind == "mount":
        tracing.unmount_tracefs(Path(entry["path"]))
    else:
        raise ValueError(f"unknown resource kind {kind!r}")


def _in_removal_order(entries: list[dict]) -> list[dict]:
    return sorted(reversed(entries), key=lambda e: KINDS.index(e["kind"]))


# --- child processes ------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """In a child process of a run: be killed (SIGKILL) when the thread that started it exits, or at once if
    the run (``parent_pid``) is gone already (kernel/sys.c prctl PR_SET_PDEATHSIG). Start the child from the
    run's main thread: the signal comes when the *thread* that forked exits."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        os._exit(1)


def kill_child(pid: int, start: int | None, timeout_s: float = 10.0) -> None:
    """SIGKILL process ``pid`` if it is still the one that started at ``start``, and reap it if it is ours;
    wait (up to ``timeout_s``) until it is gone."""
    if start is None or process_start(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
        return
    deadline = time.monotonic() + timeout_s
    while process_start(pid) == start and time.monotonic() < deadline:  # another's child: init reaps it
        time.sleep(0.01)


def block_run_signals() -> None:
    """For a thread a run starts in its own process: leave the signals that stop the run to the main thread,
    so that they interrupt what it waits on (the kernel gives a process's signal to any one thread that does
    not block it, and Python runs its handlers in the main thread only when it gets there)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, RUN_SIGNALS)


# --- the sweep ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sweep_lock(state_dir: Path):
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _orphan(name: str, records: dict[str, "Record"]) -> bool:
    """Whether ``name`` is a run's resource that no record lists (records are swept on their own) and whose
    pid no longer runs."""
    pid = owner_pid(name)
    return pid is not None and name not in records and process_start(pid) is None


def _remove_each(entries: list[dict], whose: str, report: list[str], record: "Record | None" = None) -> None:
    """Remove each resource, in KINDS order, trying all; ``report`` says what went and what could not."""
    for entry in _in_removal_order(entries):
        what = f"{entry['kind']} {entry.get('path') or entry.get('name') or entry.get('pid')} of {whose}"
        try:
            remove_resource(entry)
        except Exception as exc:  # a record keeps it for the next sweep; the run goes on and says so
            report.append(f"could not remove {what}: {exc}")
            continue
        report.append(f"removed {what}")
        if record is not None:
            record.drop(entry)


def sweep(state_dir: Path = STATE_DIR, swap_dirs: tuple[Path, ...] = (swapfile.DEFAULT_DIRECTORY,)) -> list[str]:
    """Remove every resource of runs that no longer run: those their records list, and any named like a run's
    whose pid is gone. Returns what it removed (or could not), one line each, for the run's log."""
    state_dir = Path(state_dir)
    report: list[str] = []
    with _sweep_lock(state_dir):
        records = _records(state_dir)
        for record in records.values():
            if not record.owner.alive():
                _remove_each(list(record.resources), record.name, report, record)
                if not record.resources:
                    record.path.unlink(missing_ok=True)
        _remove_each(_orphans(records, swap_dirs), "a run without a record", report)
    return report


def _records(state_dir: Path) -> dict[str, Record]:
    records = {}
    for path in Path(state_dir).glob(f"{PREFIX}-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            records[path.stem] = Record.load(path)
    return records


def _orphans(records: dict[str, Record], swap_dirs: tuple[Path, ...]) -> list[dict]:
    """Resources named like a run's, of runs that no longer run, which no record lists."""
    found = []
    root = tracing.find_tracefs()
    if root is not None and (root / "instances").is_dir():
        found += [{"kind": "instance", "root": str(root), "name": i.name} for i in (root / "instances").iterdir()
                  if _orphan(i.name, records)]  # fmt: skip
    with contextlib.suppress(HostError):
        found += [{"kind": "cgroup", "path": str(g)} for g in cgroup.memory_hierarchy_v1().iterdir()
                  if g.is_dir() and _orphan(g.name, records)]  # fmt: skip
    swaps = {a.path for a in swapfile.active_swaps()}
    swaps |= {p for d in swap_dirs if Path(d).is_dir() for p in Path(d).glob(f"{PREFIX}-*{SWAP_SUFFIX}")}
    found += [{"kind": "swapfile", "path": str(p)} for p in sorted(swaps)
              if p.name.endswith(SWAP_SUFFIX) and _orphan(p.name.removesuffix(SWAP_SUFFIX), records)]  # fmt: skip
    found += [{"kind": "mount", "path": str(m)} for m in tracing.tracefs_mounts()
              if m.name.endswith(TRACEFS_SUFFIX) and _orphan(m.name.removesuffix(TRACEFS_SUFFIX), records)]  # fmt: skip
    return found


def sweep_instances(root: Path, state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the tracing instances under ``root`` of runs that no longer run: a killed run's instance lives
    on after its tracefs mount is gone, and can be reached again once tracefs is mounted."""
    report: list[str] = []
    with _sweep_lock(Path(state_dir)):
        records = _records(state_dir)
        names = [i.name for i in (Path(root) / "instances").iterdir()]
        dead = [n for n in names if _orphan(n, records) or (n in records and not records[n].owner.alive())]
        _remove_each([{"kind": "instance", "root": str(root), "name": n} for n in dead], "a killed run", report)
    return report


# --- a run's resources ----------------------------------------------------------------------------------


class RunResources:
    """The resources of one run, created through it and removed when the run leaves it, however it leaves.

    ::

        with RunResources("swap-demo", time_limit_s=600) as run:
            swap = run.swapfile(2 << 30)
            group = run.cgroup(limit_bytes=1 << 30, swap_bytes=2 << 30)
            trace = run.tracing()               # a TraceReader on the run's instance, not started
            child = start the tenant (it calls die_with_parent(os.getppid()) first)
            run.child(child.pid); group.add_process(child.pid); trace.add_run_process(child.pid)
            trace.start(); ...; counts = trace.stop()

    Enter it in the main thread: it installs handlers for SIGTERM and SIGHUP (RunInterrupted) and the time
    limit's SIGALRM (RunTimeout), and restores the previous ones when it leaves.
    """

    def __init__(self, run_id: str, time_limit_s: float | None = None, state_dir: Path = STATE_DIR,
                 swap_dirs: tuple[Path, ...] = (swapfile.DEFAULT_DIRECTORY,)):  # fmt: skip
        self.name = run_name(run_id)
        self.time_limit_s = time_limit_s
        self.state_dir = Path(state_dir)
        self.swap_dirs = tuple(swap_dirs)
        self.record: Record | None = None
        self.swept: list[str] = []  # what entering removed of killed runs
        self._undo: dict[int, object] = {}  # id(entry) -> the live object to close first (a TraceReader)
        self._handlers: dict[int, object] = {}
        self._closing = False
        self._deferred: str | None = None
        self._stop: tuple[int, BaseException] | None = None  # the last stop a signal raised, and the signal
        self._unraisablehook = sys.unraisablehook
        self._resignal = threading.Lock()

    def __enter__(self) -> "RunResources":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("RunResources must be entered in the main thread: it handles SIGTERM, SIGHUP and "
                               "the time limit's SIGALRM there")  # fmt: skip
        self.swept = sweep(self.state_dir, self.swap_dirs)
        self.record = Record.new(self.name, self.state_dir)
        self.record.save()
        for sig in RUN_SIGNALS:
            self._handlers[sig] = signal.signal(sig, self._on_signal)
        self._unraisablehook = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable
        if self.time_limit_s:
            signal.setitimer(signal.ITIMER_REAL, self.time_limit_s)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        swallowed = self._stop[1] if exc_type is None and self._stop else None  # caught by the run's code
        self.close(raise_deferred=exc_type is None)
        if swallowed is not None:
            raise swallowed

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self._closing:  # finish cleaning up first
            if signum != signal.SIGALRM:
                self._deferred = name
            return
        if signum == signal.SIGALRM:
            stop: BaseException = RunTimeout(f"the run went over its time limit of {self.time_limit_s:g} s")
        elif signum == signal.SIGINT:
            stop = KeyboardInterrupt()
        else:
            stop = RunInterrupted(f"stopped by {name}")
        self._stop = (signum, stop)
        raise stop

    def _on_unraisable(self, unraisable) -> None:
        """sys.unraisablehook while the run runs. The interpreter cannot propagate an exception raised in a
        finalizer (a ``__del__``, a weakref callback): a stop raised there would be printed as ignored and
        the run would go on to its end. So the signal is sent to the main thread again, a moment later, from
        a thread of its own (from here, the handler would run inside this hook, and be lost too)."""
        if self._stop is not None and unraisable.exc_value is self._stop[1]:
            threading.Thread(target=self._signal_again, args=(self._stop[0],), name=f"{self.name}-stop",
                             daemon=True).start()  # fmt: skip
            return
        self._unraisablehook(unraisable)

    def _signal_again(self, signum: int) -> None:
        block_run_signals()
        time.sleep(RESIGNAL_DELAY_S)
        with self._resignal:  # not once the run has restored the handlers it found
            if self._handlers:
                signal.pthread_kill(threading.main_thread().ident, signum)

    # Creating: each resource is written into the record before it is made.
    def cgroup(self, limit_bytes: int, swap_bytes: int | None) -> cgroup.MemoryCgroup:
        root = cgroup.memory_hierarchy_v1()
        entry = self._register("cgroup", path=str(root / self.name))
        return self._made(entry, cgroup.MemoryCgroup.create(self.name, limit_bytes, swap_bytes, root))

    def swapfile(self, size_bytes: int, directory: Path = swapfile.DEFAULT_DIRECTORY,
                 priority: int = swapfile.DEFAULT_PRIORITY) -> swapfile.SwapFile:  # fmt: skip
        entry = self._register("swapfile", path=str(Path(directory) / f"{self.name}{SWAP_SUFFIX}"))
        return self._made(entry, swapfile.SwapFile.create(self.name, size_bytes, directory, priority))

    def tracing(self, events=tracing.DEFAULT_EVENTS, buffer_kb: int = tracing.DEFAULT_BUFFER_KB) -> tracing.TraceReader:
        """A reader (not started) on a tracing instance of the run's, tracefs mounted for it if needed."""
        root = shared_tracefs()
        if root is None:
            mountpoint = Path("/tmp") / f"{self.name}{TRACEFS_SUFFIX}"
            self._made(self._register("mount", path=str(mountpoint)), None)
            root = tracing.mount_tracefs(mountpoint)
        self.swept += sweep_instances(root, self.state_dir)  # a killed run's, unreachable until tracefs was mounted
        entry = self._register("instance", root=str(root), name=self.name)
        reader = tracing.TraceReader(tracing.TraceInstance.create(root, self.name, events, buffer_kb))
        return self._made(entry, reader)

    def child(self, pid: int) -> None:
        """A child process of the run: killed and reaped when the run ends, if it still runs."""
        self._register("child", pid=pid, start=process_start(pid))

    def _register(self, kind: str, **where) -> dict:
        if self.record is None:
            raise RuntimeError("RunResources must be entered (with ...) before it creates anything")
        return self.record.add(kind, **where)

    def _made(self, entry: dict, obj):
        self._undo[id(entry)] = obj
        return obj

    def close(self, raise_deferred: bool = False) -> None:
        """Remove everything, in KINDS order; every removal is tried even if one fails (the first failure is
        raised after). Idempotent."""
        if self.record is None:
            return
        self._closing = True
        if self.time_limit_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
        failure: BaseException | None = None
        try:
            for entry in _in_removal_order(self.record.resources):
                try:
                    live = self._undo.pop(id(entry), None)
                    if isinstance(live, tracing.TraceReader):
                        live.close()
                    remove_resource(entry)
                    self.record.drop(entry)
                except Exception as exc:  # the rest still goes; the record keeps it for the next run's sweep
                    failure = failure or exc
            if not self.record.resources:
                self.record.path.unlink(missing_ok=True)
        finally:
            with self._resignal:
                for sig, handler in self._handlers.items():
                    signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: one not from Python
                self._handlers = {}
            if sys.unraisablehook == self._on_unraisable:
                sys.unraisablehook = self._unraisablehook
            self.record = None
            self._closing = False
        if failure is not None:
            raise failure
        if raise_deferred and self._deferred:
            raise RunInterrupted(f"stopped by {self._deferred} (after cleaning up)")
