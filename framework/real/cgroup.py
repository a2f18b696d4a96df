"""The run's memory cgroup: ``host.memory_mib`` as a limit on the tenants' memory.

The machine's RAM cannot shrink, so the real twin runs its tenants (the guest's process, plain tenants) in
a memory cgroup of its own whose limit is the simulated host's memory. Charging a page over the limit
makes the charging thread reclaim from the group (mm/memcontrol.c try_charge_memcg ->
try_to_free_mem_cgroup_pages, mm/vmscan.c): direct reclaim in the faulting thread, no kswapd, no
watermarks; if reclaim fails the group's own OOM killer runs (mem_cgroup_out_of_memory).

Cgroup **v1** (Documentation/admin-guide/cgroup-v1/memory.rst; mm/memcontrol-v1.c), as mounted on the
project's machines at /sys/fs/cgroup/memory. Only v1 is supported: a machine whose memory controller
is only on cgroup v2 gets one clear line from ``memory_hierarchy_v1`` (v2 differs in every file name,
forbids single threads in a memory group and cannot be tested here).

Files used, all inside the run's own group (nothing else is ever written):
- ``memory.limit_in_bytes`` (the limit), ``memory.memsw.limit_in_bytes`` (memory plus swap, where the
  kernel has swap accounting: set to limit + the run's swap so that the tenants swap at most that much
  whatever other swap the machine has, and to the limit alone for a run without swap);
- ``cgroup.procs`` (a whole process joins) and ``tasks`` (one thread joins: v1 allows it);
- ``memory.stat`` (memcg1_stat_format: cache, rss, rss_huge, swap, pgfault, pgmajfault, the LRU lists;
  no pgscan, pgsteal, pswpin or pswpout in v1), ``memory.usage_in_bytes``, ``memory.max_usage_in_bytes``,
  ``memory.failcnt`` (charges that hit the limit), ``memory.memsw.*``, and ``memory.oom_control``
  (oom_kill_disable, under_oom, and oom_kill: the group's OOM kills, where the kernel reports it).

Removal moves any task left in the group to its parent (moving kills nothing), then rmdir; the kernel
keeps a removed group's leftover page-cache charges in an offline memcg, so no force_empty is needed.
"""

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import mounts
from .errors import HostError

PAGE = os.sysconf("SC_PAGE_SIZE")


def memory_hierarchy_v1() -> Path:
    """The mountpoint of the cgroup v1 hierarchy with the memory controller; HostError naming what the
    machine has instead (only cgroup v2, or no memory controller at all)."""
    for m in mounts.of_type("cgroup"):
        if "memory" in m.super_options:
            return m.mountpoint
    for m in mounts.of_type("cgroup2"):
        controllers = m.mountpoint / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            raise HostError(f"the memory cgroup controller is only on cgroup v2 (at {m.mountpoint}); the real "
                            "twin needs cgroup v1's memory controller (memory.limit_in_bytes), e.g. booted with "
                            "systemd.unified_cgroup_hierarchy=0")  # fmt: skip
    raise HostError("no memory cgroup controller is mounted (no cgroup v1 hierarchy with 'memory' in /proc/self/"
                    "mountinfo): mount one with `mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory`")  # fmt: skip


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _read_keyed(path: Path) -> dict[str, int]:
    """A file of ``key value`` lines (memory.stat, memory.oom_control)."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


@dataclass(frozen=True)
class CgroupSample:
    """One reading of the group's figures. The group is the run's own, created empty, so its event counters
    (memory.stat pgfault, pgmajfault, pgpgin, pgpgout, workingset_*; failcnt; oom_kill) count from the run's
    start; the rest are gauges at the time of reading."""

    limit_bytes: int  # memory.limit_in_bytes
    usage_bytes: int  # memory.usage_in_bytes: charged now (anon, page cache, kernel memory)
    max_usage_bytes: int  # memory.max_usage_in_bytes: the peak since creation
    failcnt: int  # memory.failcnt: charges that hit the limit
    memsw_usage_bytes: int | None  # memory plus swap, where swap accounting exists
    memsw_max_usage_bytes: int | None
    oom_kills: int | None  # memory.oom_control oom_kill, where the kernel reports it
    under_oom: bool
    stat: dict[str, int]  # memory.stat (this group's own lines and the total_* of its hierarchy)


class MemoryCgroup:
    """A memory cgroup v1 group of the run: ``create`` it, let tenants join, read it, ``remove`` it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, name: str, limit_bytes: int, swap_bytes: int | None, root: Path | None = None) -> "MemoryCgroup":
        """Create group ``name`` directly under the memory hierarchy's root with a limit of ``limit_bytes``
        (rounded down to pages by the kernel). ``swap_bytes``: how much the tenants may swap (memsw = limit
        + swap; 0: no swap at all); None leaves memsw unlimited. HostError if the group exists already."""
        if limit_bytes < 16 * PAGE:
            raise HostError(f"memory cgroup limit {limit_bytes} bytes is too small: at least {16 * PAGE} bytes")
        root = root or memory_hierarchy_v1()
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            raise HostError(f"memory cgroup {path} exists already: another run of the same name and pid?") from None
        group = cls(path)
        try:
            group._write("memory.limit_in_bytes", limit_bytes)  # before memsw, which may not go below it
            if swap_bytes is not None and group.has_swap_accounting:
                group._write("memory.memsw.limit_in_bytes", limit_bytes + swap_bytes)
        except BaseException:
            group.remove()
            raise
        return group

    # Joining. A task charges the group for what it allocates after it joins; what it allocated before
    # stays charged where it was (v1's move_charge_at_immigrate, deprecated, is left off).
    def add_process(self, pid: int) -> None:
        """Move every thread of process ``pid`` into the group (``cgroup.procs``)."""
        self._write("cgroup.procs", pid)

    def add_thread(self, tid: int) -> None:
        """Move the one thread ``tid`` into the group (``tasks``; cgroup v1 only)."""
        self._write("tasks", tid)

    def processes(self) -> list[int]:
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def threads(self) -> list[int]:
        return [int(x) for x in (self.path / "tasks").read_text().split()]

    # Reading.
    @property
    def has_swap_accounting(self) -> bool:
        return (self.path / "memory.memsw.limit_in_bytes").exists()

    def limit_bytes(self) -> int:
        return _read_int(self.path / "memory.limit_in_bytes")

    def memsw_limit_bytes(self) -> int | None:
        return _read_int(self.path / "memory.memsw.limit_in_bytes") if self.has_swap_accounting else None

    def usage_bytes(self) -> int:
        return _read_int(self.path / "memory.usage_in_bytes")

    def stat(self) -> dict[str, int]:
        return _read_keyed(self.path / "memory.stat")

    def oom_control(self) -> dict[str, int]:
        """``oom_kill_disable``, ``under_oom`` and, on kernels since 4.13, ``oom_kill``."""
        return _read_keyed(self.path / "memory.oom_control")

    def sample(self) -> CgroupSample:
        memsw = self.has_swap_accounting
        oom = self.oom_control()
        return CgroupSample(
            limit_bytes=self.limit_bytes(),
            usage_bytes=self.usage_bytes(),
            max_usage_bytes=_read_int(self.path / "memory.max_usage_in_bytes"),
            failcnt=_read_int(self.path / "memory.failcnt"),
            memsw_usage_bytes=_read_int(self.path / "memory.memsw.usage_in_bytes") if memsw else None,
            memsw_max_usage_bytes=_read_int(self.path / "memory.memsw.max_usage_in_bytes") if memsw else None,
            oom_kills=oom.get("oom_kill"),
            under_oom=bool(oom.get("under_oom", 0)),
            stat=self.stat(),
        )

    def remove(self, timeout_s: float = 10.0) -> None:
        remove_group(self.path, timeout_s)

    def _write(self, file: str, value: int) -> None:
        (self.path / file).write_text(f"{value}\n")


def remove_group(path: Path, timeout_s: float = 10.0) -> None:
    """Remove the run's group at ``path``: move every task still in it to the parent group, then rmdir,
    retrying while a task is on its way out (an exiting task leaves the group in cgroup_exit). Gone
    already: nothing to do. OSError if it cannot be removed within ``timeout_s``."""
    path = Path(path)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            tids = [int(x) for x in (path / "tasks").read_text().split()]
        except FileNotFoundError:
            return
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                (path.parent / "tasks").write_text(f"{tid}\n")
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.02)
