"""The run's window on the kernel's events: a tracefs instance of its own, a reader draining it, and counts.

tracefs (Documentation/trace/ftrace.rst, events.rst) is used where it is mounted, or mounted by the run
at a private mountpoint (``/tmp/<run name>.tracefs``) and unmounted at the end. The run creates its own
tracing instance, ``instances/<run name>`` (mkdir; kernel/trace/trace.c instance_mkdir), with a ring
buffer of its own: it enables its events there, and **never touches the top-level buffer** or its events,
which belong to whoever else traces on the machine. Removing the instance (rmdir; instance_rmdir) frees
its buffer and its event enables; the run disables its events first.

The kernels of the project's machines have no hist triggers (CONFIG_HIST_TRIGGERS off), so counts are
made here: a thread reads ``per_cpu/cpuN/trace_pipe_raw`` (the ring buffer's sub-buffers, binary;
kernel/trace/ring_buffer.c ring_buffer_read_page) while the run goes and tallies each event as it reads
it. Offsets come from the instance's ``events/header_page`` and from each event's ``format`` file, not
from constants. A lost event is never silent: each CPU's ``stats`` (overrun, dropped events, commit
overrun) are summed into ``TraceCounts.lost_events``, and sub-buffers flagged RB_MISSED_EVENTS are
counted too.

What is tallied, per event and per *who* (the task that hit the tracepoint, labelled ``run`` for the
run's tenants, ``kernel:<comm>`` for kernel threads such as kswapd0, kcompactd0, khugepaged and DAMON's
kdamond.N, ``user:<comm>`` for any other process, ``gone`` if it exited before it was seen, ``idle`` for
pid 0):

- every event: how many;
- the notifier events with an hva range (``kvm:kvm_unmap_hva_range`` start/end from
  kvm_mmu_notifier_invalidate_range_start, ``kvm:kvm_age_hva`` from kvm_mmu_notifier_clear_flush_young
  and _clear_young, ``kvm:kvm_test_age_hva`` from _test_young; virt/kvm/kvm_main.c): the calls whose range
  meets the watched hva ranges (the guest's memslots) and the pages of the overlap. These tracepoints fire
  for every range of the mm, guest RAM or not, and for every VM on the machine: the hva ranges keep the
  guest's, the who keeps the run's from other processes', and DAMON's kdamond (which calls the young ops
  on guest pages too, mm/damon/vaddr.c) apart from reclaim;
- fields summed (``SUM_FIELDS``: nr_scanned and nr_reclaimed of vmscan:mm_vmscan_lru_shrink_inactive, ...)
  and values counted (``VALUE_FIELDS``: the level of each kvmmmu:kvm_mmu_set_spte, 1 = 4 KiB, 2 = 2 MiB).
"""

import contextlib
import ctypes
import errno
import os
import signal
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import mounts
from .errors import HostError

PAGE = os.sysconf("SC_PAGE_SIZE")

DEFAULT_EVENTS = (
    # KVM's notifier callbacks (virt/kvm/kvm_main.c) and its shadow MMU (arch/x86/kvm/mmu/mmu.c).
    "kvm:kvm_unmap_hva_range",
    "kvm:kvm_age_hva",
    "kvm:kvm_test_age_hva",
    "kvm:kvm_emulate_insn",  # must stay 0 during the replay: the guest runs natively
    "kvmmmu:kvm_mmu_set_spte",
    "kvmmmu:kvm_mmu_prepare_zap_page",
    "kvmmmu:kvm_mmu_split_huge_page",
    # Reclaim (mm/vmscan.c): memcg limit reclaim, global direct reclaim, kswapd.
    "vmscan:mm_vmscan_lru_shrink_inactive",
    "vmscan:mm_vmscan_lru_shrink_active",
    "vmscan:mm_vmscan_memcg_reclaim_begin",
    "vmscan:mm_vmscan_memcg_reclaim_end",
    "vmscan:mm_vmscan_direct_reclaim_begin",
    "vmscan:mm_vmscan_direct_reclaim_end",
    "vmscan:mm_vmscan_kswapd_wake",
    "vmscan:mm_vmscan_write_folio",
    # THP (mm/khugepaged.c, mm/huge_memory.c), compaction, migration, the OOM killer.
    "huge_memory:mm_khugepaged_scan_pmd",
    "huge_memory:mm_collapse_huge_page",
    "thp:set_migration_pmd",
    "thp:remove_migration_pmd",
    "compaction:mm_compaction_begin",
    "compaction:mm_compaction_end",
    "migrate:mm_migrate_pages",
    "oom:mark_victim",
)
# Per CPU: some 10 s of the busiest reclaim seen here (50,000 events/s of about 32 bytes), should the reader stall.
DEFAULT_BUFFER_KB = 16384

# Events with an hva range: (start field, end field); None: one page at start.
RANGE_FIELDS = {
    "kvm:kvm_unmap_hva_range": ("start", "end"),
    "kvm:kvm_age_hva": ("start", "end"),
    "kvm:kvm_test_age_hva": ("hva", None),
}
SUM_FIELDS = {
    "vmscan:mm_vmscan_lru_shrink_inactive": ("nr_scanned", "nr_reclaimed"),
    "vmscan:mm_vmscan_lru_shrink_active": ("nr_taken", "nr_deactivated"),
    "vmscan:mm_vmscan_memcg_reclaim_end": ("nr_reclaimed",),
    "vmscan:mm_vmscan_direct_reclaim_end": ("nr_reclaimed",),
    "migrate:mm_migrate_pages": ("succeeded", "failed", "thp_succeeded", "thp_failed", "thp_split"),
}
VALUE_FIELDS = {"kvmmmu:kvm_mmu_set_spte": "level"}

# The ring buffer's event header (kernel/trace/ring_buffer.c; events/header_event): type_len in the low
# 5 bits, time delta in the other 27; type_len 1-28 is a data event of type_len * 4 bytes.
RB_PADDING, RB_TIME_EXTEND, RB_TIME_STAMP = 29, 30, 31
RB_MISSED_EVENTS, RB_MISSED_STORED = 1 << 31, 1 << 30
RB_SIZE_MASK = (1 << 30) - 1

_libc = ctypes.CDLL(None, use_errno=True)


# --- tracefs and the instance --------------------------------------------------------------------------


def tracefs_mounts() -> list[Path]:
    """Every mountpoint of tracefs (each shows the same tracing state)."""
    return [m.mountpoint for m in mounts.of_type("tracefs")]


def find_tracefs() -> Path | None:
    """Where tracefs is mounted (the first such mount), or None."""
    return next(iter(tracefs_mounts()), None)


def mount_tracefs(mountpoint: Path) -> Path:
    """Mount tracefs at ``mountpoint`` (created); HostError with the reason if the kernel refuses."""
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    if _libc.mount(b"nodev", os.fsencode(mountpoint), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        mountpoint.rmdir()
        raise HostError(f"tracefs cannot be mounted at {mountpoint}: {os.strerror(err)}")
    return mountpoint


def unmount_tracefs(mountpoint: Path) -> None:
    """Unmount tracefs from the run's own mountpoint and remove the directory. Only called on a mountpoint of
    a run (``cleanup`` checks the name)."""
    mountpoint = Path(mountpoint)
    mounted = mountpoint in tracefs_mounts()
    if mounted and _libc.umount2(os.fsencode(mountpoint), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {mountpoint}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        mountpoint.rmdir()


def available_events(root: Path) -> set[str]:
    """Every ``system:event`` this kernel offers."""
    return set((Path(root) / "available_events").read_text().split())


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class EventFormat:
    """An event's ``format`` file: its id (the record's common_type) and its fields' offsets."""

    name: str  # system:event
    id: int
    fields: dict[str, Field]

    @classmethod
    def read(cls, events_dir: Path, name: str) -> "EventFormat":
        system, event = name.split(":")
        text = (events_dir / system / event / "format").read_text()
        return cls(name, int(text.split("ID:")[1].split()[0]), parse_fields(text))


def parse_fields(text: str) -> dict[str, Field]:
    """The ``field:TYPE NAME; offset:N; size:N; signed:N;`` lines of a format file (also header_page)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = dict(p.strip().split(":", 1) for p in line.split(";") if ":" in p)
        decl = parts["field"].split("[")[0].split()
        out[decl[-1].lstrip("*")] = Field(decl[-1].lstrip("*"), int(parts["offset"]), int(parts["size"]),
                                         parts.get("signed", "0").strip() == "1")  # fmt: skip
    return out


class TraceInstance:
    """A tracing instance of the run's own, with its events enabled."""

    def __init__(self, root: Path, name: str):
        self.root = Path(root)
        self.name = name
        self.path = self.root / "instances" / name
        self.events: tuple[str, ...] = ()  # enabled
        self.missing: tuple[str, ...] = ()  # asked for, but this kernel has no such event

    @classmethod
    def create(cls, root: Path, name: str, events: Iterable[str] = DEFAULT_EVENTS,
               buffer_kb: int = DEFAULT_BUFFER_KB) -> "TraceInstance":  # fmt: skip
        """Create ``instances/<name>`` with ``buffer_kb`` KiB of ring buffer per CPU and enable ``events``
        (``system:event``) there; those the kernel lacks are listed in ``missing``."""
        inst = cls(root, name)
        have = available_events(root)
        wanted = list(dict.fromkeys(events))
        inst.missing = tuple(e for e in wanted if e not in have)
        try:
            inst.path.mkdir()
        except FileExistsError:
            raise HostError(f"tracing instance {inst.path} exists already: another run of this name and pid?") from None
        try:
            (inst.path / "buffer_size_kb").write_text(f"{buffer_kb}\n")
            inst.events = tuple(e for e in wanted if e in have)
            for event in inst.events:
                inst._enable(event, True)
        except BaseException:
            remove_instance(root, name)
            raise
        return inst

    def disable(self) -> None:
        """Disable every event of the instance (its own ``events/enable``; nothing outside it)."""
        enable = self.path / "events" / "enable"
        if enable.exists():
            enable.write_text("0\n")

    def enabled_events(self) -> list[str]:
        """The instance's enabled events, as its ``set_event`` lists them."""
        return (self.path / "set_event").read_text().split()

    def remove(self) -> None:
        remove_instance(self.root, self.name)

    def _enable(self, event: str, on: bool) -> None:
        system, name = event.split(":")
        (self.path / "events" / system / name / "enable").write_text("1\n" if on else "0\n")


def remove_instance(root: Path, name: str) -> None:
    """Disable the events of ``instances/<name>`` and remove it (it must not be open: the reader closes its
    files first). Gone already: nothing to do. Only called on an instance of a run (``cleanup`` checks
    the name)."""
    path = Path(root) / "instances" / name
    try:
        (path / "events" / "enable").write_text("0\n")
    except FileNotFoundError:
        return
    for attempt in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:  # EBUSY while a reader of ours still holds a file open
            if exc.errno != errno.EBUSY or attempt == 49:
                raise
            time.sleep(0.02)


# --- who hit a tracepoint -------------------------------------------------------------------------------

PF_KTHREAD = 0x00200000  # include/linux/sched.h


class Tasks:
    """Labels a pid as the tracepoints' common_pid gives it: ``run`` for a thread of the run's tenants,
    ``kernel:<comm>``, ``user:<comm>``, ``gone``, or ``idle`` (pid 0). A pid is labelled the first time it
    is seen (it is alive then, usually: the reader is a fraction of a second behind); the tenants' threads
    are also learnt by listing /proc/PID/task whenever the reader drains, so a tenant that exits before the
    last drain keeps its label."""

    def __init__(self) -> None:
        self.run_tgids: set[int] = set()
        self.labels: dict[int, str] = {0: "idle"}
        self.lock = threading.Lock()

    def add_run_process(self, pid: int) -> None:
        with self.lock:
            self.run_tgids.add(pid)
        self.refresh()

    def refresh(self) -> None:
        """Learn the run's tenants' current threads."""
        for tgid in list(self.run_tgids):
            try:
                tids = os.listdir(f"/proc/{tgid}/task")
            except OSError:
                continue
            for tid in tids:
                self.labels[int(tid)] = "run"

    def label(self, pid: int) -> str:
        found = self.labels.get(pid)
        if found is None:
            found = self.labels[pid] = self._look_up(pid)
        return found

    def _look_up(self, pid: int) -> str:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "gone"
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("Tgid", "0")) in self.run_tgids:
            return "run"
        flags = int(stat[stat.rfind(")") + 2 :].split()[6])
        comm = fields.get("Name", "?").strip()
        return f"kernel:{comm}" if flags & PF_KTHREAD else f"user:{comm}"


# --- the counts -----------------------------------------------------------------------------------------

Who = str | Iterable[str] | Callable[[str], bool] | None


def _matcher(who: Who) -> Callable[[str], bool]:
    if who is None:
        return lambda w: True
    if callable(who):
        return who
    if isinstance(who, str):
        return lambda w: w == who
    labels = set(who)
    return lambda w: w in labels


def reclaimers(who: str) -> bool:
    """The tasks that reclaim for the run: its own threads (direct reclaim under the cgroup limit) and
    kswapd (global reclaim). Not DAMON's kdamond, not khugepaged."""
    return who == "run" or who.startswith("kernel:kswapd")


def damon(who: str) -> bool:
    return who.startswith("kernel:kdamond")


@dataclass
class RangeTally:
    calls: int = 0
    pages: int = 0


def _nested(leaf: Callable) -> defaultdict:
    """event -> who -> leaf, created as first used."""
    return defaultdict(lambda: defaultdict(leaf))


@dataclass
class TraceCounts:
    """What the reader tallied. Every dict is keyed by event (``system:event``), then by who."""

    events: dict[str, dict[str, int]] = field(default_factory=lambda: _nested(int))
    inside: dict[str, dict[str, RangeTally]] = field(default_factory=lambda: _nested(RangeTally))
    sums: dict[str, dict[str, dict[str, int]]] = field(default_factory=lambda: _nested(lambda: defaultdict(int)))
    values: dict[str, dict[str, dict[int, int]]] = field(default_factory=lambda: _nested(lambda: defaultdict(int)))
    enabled: tuple[str, ...] = ()  # the events the instance had on: an event not enabled is unobserved, not 0
    lost_events: int = 0  # per_cpu stats: overrun + dropped events + commit overrun, all CPUs
    missed_subbuffers: int = 0  # sub-buffers the kernel flagged RB_MISSED_EVENTS
    bytes_read: int = 0

    def observed(self, event: str) -> bool:
        return event in self.enabled

    def count(self, event: str, who: Who = None) -> int:
        match = _matcher(who)
        return sum(n for w, n in self.events.get(event, {}).items() if match(w))

    def calls_inside(self, event: str, who: Who = None) -> int:
        match = _matcher(who)
        return sum(t.calls for w, t in self.inside.get(event, {}).items() if match(w))

    def pages_inside(self, event: str, who: Who = None) -> int:
        match = _matcher(who)
        return sum(t.pages for w, t in self.inside.get(event, {}).items() if match(w))

    def sum(self, event: str, name: str, who: Who = None) -> int:
        match = _matcher(who)
        return sum(by[name] for w, by in self.sums.get(event, {}).items() if match(w))

    def value_counts(self, event: str, who: Who = None) -> dict[int, int]:
        match = _matcher(who)
        out: dict[int, int] = defaultdict(int)
        for w, by in self.values.get(event, {}).items():
            if match(w):
                for value, n in by.items():
                    out[value] += n
        return dict(out)

    def as_dict(self) -> dict:
        """Plain dicts, for a JSON file beside the run's results."""
        return {
            "events": {e: dict(by) for e, by in self.events.items()},
            "inside": {e: {w: [t.calls, t.pages] for w, t in by.items()} for e, by in self.inside.items()},
            "sums": {e: {w: dict(f) for w, f in by.items()} for e, by in self.sums.items()},
            "values": {
                e: {w: {str(k): n for k, n in v.items()} for w, v in by.items()} for e, by in self.values.items()
            },
            "enabled": list(self.enabled),
            "lost_events": self.lost_events,
            "missed_subbuffers": self.missed_subbuffers,
        }


# --- the reader -----------------------------------------------------------------------------------------

_U32 = struct.Struct("<I")
_FORMATS = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h", (4, False): "I", (4, True): "i",
            (8, False): "Q", (8, True): "q"}  # fmt: skip


def _reader_of(f: Field) -> struct.Struct:
    return struct.Struct("<" + _FORMATS[f.size, f.signed])


@dataclass
class _Decoder:
    """How to tally one event id: its name, and the fields to read."""

    name: str
    range: tuple[struct.Struct, int, struct.Struct | None, int] | None
    sums: tuple[tuple[str, struct.Struct, int], ...]
    value: tuple[struct.Struct, int] | None


class TraceReader:
    """Drains an instance's per-CPU ring buffers on a thread of its own and tallies the events as it goes.
    ``watch`` the guest's memslots and ``add_run_process`` its tenants before they run; ``stop`` disables
    the instance's events, drains what is left, and returns the counts."""

    def __init__(self, instance: TraceInstance, poll_s: float = 0.05):
        self.instance = instance
        self.poll_s = poll_s
        self.tasks = Tasks()
        self.counts = TraceCounts(enabled=instance.events)
        self.ranges: tuple[tuple[int, int], ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        header = parse_fields((instance.path / "events" / "header_page").read_text())
        self._commit = _reader_of(header["commit"]), header["commit"].offset
        self._data_offset = header["data"].offset
        subbuf = instance.path / "buffer_subbuf_size_kb"  # since 6.8; one page before
        self._subbuf = int(subbuf.read_text()) * 1024 if subbuf.exists() else PAGE
        self._decoders = {fmt.id: self._decoder(fmt) for fmt in
                          (EventFormat.read(instance.path / "events", e) for e in instance.events)}  # fmt: skip
        # The common fields (common_type, common_pid) lead every event's record alike.
        common = EventFormat.read(instance.path / "events", instance.events[0]).fields if instance.events else {}
        self._type = _reader_of(common["common_type"]) if common else None
        self._pid = (_reader_of(common["common_pid"]), common["common_pid"].offset) if common else (None, 0)
        self._fds: list[int] = []

    def _decoder(self, fmt: EventFormat) -> _Decoder:
        rng = None
        if fmt.name in RANGE_FIELDS:
            start, end = RANGE_FIELDS[fmt.name]
            fs, fe = fmt.fields[start], fmt.fields[end] if end else None
            rng = (_reader_of(fs), fs.offset, _reader_of(fe) if fe else None, fe.offset if fe else 0)
        sums = tuple((n, _reader_of(fmt.fields[n]), fmt.fields[n].offset) for n in SUM_FIELDS.get(fmt.name, ())
                     if n in fmt.fields)  # fmt: skip
        vf = VALUE_FIELDS.get(fmt.name)
        value = (_reader_of(fmt.fields[vf]), fmt.fields[vf].offset) if vf in fmt.fields else None
        return _Decoder(fmt.name, rng, sums, value)

    def watch(self, start: int, end: int) -> None:
        """Tally the range events that meet host virtual addresses ``[start, end)`` (a memslot)."""
        self.ranges = (*self.ranges, (start, end))

    def add_run_process(self, pid: int) -> None:
        """Label the threads of process ``pid`` ``run``."""
        self.tasks.add_run_process(pid)

    def start(self) -> None:
        cpus = sorted(int(p.name[3:]) for p in (self.instance.path / "per_cpu").glob("cpu[0-9]*"))
        # Every buffer opened is kept, or closed: one left open keeps the instance from being removed (EBUSY).
        # Signals wait meanwhile: a Ctrl-C's KeyboardInterrupt between an open and its keeping would lose it.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            for c in cpus:
                self._fds.append(os.open(self.instance.path / "per_cpu" / f"cpu{c}" / "trace_pipe_raw",
                                         os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))  # fmt: skip
        except BaseException:
            self.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        self._thread = threading.Thread(target=self._run, name=f"mmnsim-trace-{self.instance.name}", daemon=True)
        self._thread.start()

    def stop(self) -> TraceCounts:
        """Disable the instance's events, drain the rest, close the buffers: the counts, lost events
        included. Raises what the reader thread raised, if anything."""
        self.instance.disable()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if self._error is None:
                while self._drain():
                    pass
                self.counts.lost_events = self._lost()
        finally:
            self.close()
        if self._error is not None:
            raise self._error
        return self.counts

    def close(self) -> None:
        """Close the buffers (an instance cannot be removed while they are open). Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # they are the main thread's to handle
        try:
            while not self._stop.is_set():
                if not self._drain():
                    self._stop.wait(self.poll_s)
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def _lost(self) -> int:
        lost = 0
        for stats in (self.instance.path / "per_cpu").glob("cpu[0-9]*/stats"):
            for line in stats.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("overrun", "commit overrun", "dropped events"):
                    lost += int(value)
        return lost

    def _drain(self) -> int:
        """Read every CPU's buffer until it is empty: the bytes read."""
        total = 0
        self.tasks.refresh()
        for fd in self._fds:
            while True:
                try:
                    data = os.read(fd, self._subbuf)
                except BlockingIOError:
                    break
                if not data:
                    break
                total += len(data)
                self._tally(memoryview(data))
        self.counts.bytes_read += total
        return total

    def _tally(self, page: memoryview) -> None:
        """Tally the events of one sub-buffer (header_page: timestamp, commit, data)."""
        commit_reader, commit_offset = self._commit
        commit = commit_reader.unpack_from(page, commit_offset)[0]
        if commit & RB_MISSED_EVENTS:
            self.counts.missed_subbuffers += 1
        end = self._data_offset + (commit & RB_SIZE_MASK)
        off = self._data_offset
        counts, ranges, label = self.counts, self.ranges, self.tasks.label
        u32, type_reader, (pid_reader, pid_offset) = _U32.unpack_from, self._type.unpack_from, self._pid
        while off + 4 <= end:
            head = u32(page, off)[0]
            type_len = head & 0x1F
            if type_len == RB_PADDING:
                if head >> 5 == 0:  # a null event: the rest is empty
                    return
                off += 4 + u32(page, off + 4)[0]
                continue
            if type_len >= RB_TIME_EXTEND:
                off += 8
                continue
            if type_len == 0:  # a long event: its length (itself included) in the next word
                length = u32(page, off + 4)[0] - 4
                rec = off + 8
            else:
                length = type_len * 4
                rec = off + 4
            off = rec + length
            decoder = self._decoders.get(type_reader(page, rec)[0])
            if decoder is None:
                continue
            who = label(pid_reader.unpack_from(page, rec + pid_offset)[0])
            counts.events[decoder.name][who] += 1
            if decoder.range is not None and ranges:
                rs, so, re_, eo = decoder.range
                start = rs.unpack_from(page, rec + so)[0]
                stop = re_.unpack_from(page, rec + eo)[0] if re_ is not None else start + PAGE
                pages = 0
                for lo, hi in ranges:
                    overlap = min(stop, hi) - max(start, lo)
                    if overlap > 0:
                        pages += -(-overlap // PAGE)
                if pages:
                    tally = counts.inside[decoder.name][who]
                    tally.calls += 1
                    tally.pages += pages
            for name, reader, foff in decoder.sums:
                counts.sums[decoder.name][who][name] += reader.unpack_from(page, rec + foff)[0]
            if decoder.value is not None:
                vr, vo = decoder.value
                counts.values[decoder.name][who][vr.unpack_from(page, rec + vo)[0]] += 1
