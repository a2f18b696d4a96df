"""The kernel's counters, read for the real twin, and the real source of every mmnsim metric.

Readings: ``read_vmstat``/``vmstat_delta`` (/proc/vmstat; mm/vmstat.c vmstat_text), the run's cgroup
(``cgroup.CgroupSample``), the tracing instance's counts (``tracing.TraceCounts``), KVM's binary
statistics (read by the KVM module through KVM_GET_STATS_FD; passed in here as dicts), and the tenants'
own fault counts (``process_faults``, ``thread_faults``, ``rusage_faults``; fs/proc/array.c do_task_stat,
charged by mm/memory.c mm_account_fault to the task that faulted, KVM's get_user_pages faults included).

The metric registry (framework/metrics.py) names where the twin reads each metric (``REAL_SOURCES``: same
name, same meaning as the model's, with the caveats), why it cannot observe the others (``REAL_UNOBSERVED``:
such a metric is **absent** from the twin's results, never 0), and declares what only the twin reports
(``REAL_ONLY``: lost trace events, young-op calls, DAMON's share, ...). This module computes them:
``VALUES`` and ``REAL_ONLY_VALUES``, joined with the registry's words in ``SOURCES``; ``metrics(obs)`` computes
them all from one ``Observation``; a source not read leaves its metric absent.

Two facts of this kernel shape the choices (both checked on the project's machines, Linux 6.18):
- /proc/vmstat counts reclaim under a cgroup limit in neither pgscan_* nor pgsteal_*
  (mm/vmscan.c shrink_inactive_list: ``if (!cgroup_reclaim(sc)) __count_vm_events(...)``), nor in
  allocstall (do_try_to_free_pages counts global reclaim only), and cgroup v1's memory.stat has no
  pgscan or pgsteal: reclaim is counted from vmscan:mm_vmscan_lru_shrink_inactive and
  mm_vmscan_memcg_reclaim_begin instead.
- /proc/vmstat is the machine's: pswpin, pswpout, thp_*, compact_*, pgmigrate_* and nr_foll_pin_* count
  every process on it. The run's cgroup counts only its tenants, so faults come from there; the rest is
  exact only while nothing else on the machine swaps, builds THPs, compacts or migrates (the caveat says
  so where it applies).
"""

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..metrics import FRAMEWORK, REAL_ONLY, REAL_SOURCES, REAL_UNOBSERVED
from .cgroup import CgroupSample
from .tracing import TraceCounts, damon, reclaimers

PAGE = os.sysconf("SC_PAGE_SIZE")


# --- readings -------------------------------------------------------------------------------------------


def read_vmstat() -> dict[str, int]:
    """/proc/vmstat, every field."""
    out = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out


def vmstat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What each field grew by (gauges such as nr_free_pages change either way)."""
    return {k: v - before.get(k, 0) for k, v in after.items()}


@dataclass(frozen=True)
class Faults:
    minor: int
    major: int


def _stat_faults(stat: str) -> Faults:
    """minflt and majflt, fields 10 and 12 of /proc/PID/stat (after the parenthesised comm)."""
    fields = stat[stat.rfind(")") + 2 :].split()
    return Faults(minor=int(fields[7]), major=int(fields[9]))


def process_faults(pid: int) -> Faults:
    """The faults of process ``pid``, all its threads, those that exited included (do_task_stat sums
    signal->min_flt, which __exit_signal accumulates, and every live thread's)."""
    return _stat_faults(Path(f"/proc/{pid}/stat").read_text())


def thread_faults(pid: int) -> dict[int, Faults]:
    """The faults of each live thread of process ``pid``, by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # exited meanwhile
            out[int(task.name)] = _stat_faults((task / "stat").read_text())
    return out


def rusage_faults(rusage) -> Faults:
    """The faults of a reaped child, from ``os.wait4``'s resource usage (ru_minflt, ru_majflt)."""
    return Faults(minor=rusage.ru_minflt, major=rusage.ru_majflt)


def smaps_bytes(pid: int, start: int, end: int, field: str) -> int:
    """The sum of ``field`` (``AnonHugePages``, ``Locked``, ...) over process ``pid``'s mappings inside
    ``[start, end)`` (a memslot), from /proc/PID/smaps (fs/proc/task_mmu.c show_smap); 0 for a process gone."""
    total, inside = 0, False
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo >= start and hi <= end
        elif inside and head == field + ":":
            total += int(line.split()[1]) * 1024
    return total


def anon_huge_bytes(pid: int, start: int, end: int) -> int:
    """The guest memory a THP backs now: AnonHugePages inside ``[start, end)``."""
    return smaps_bytes(pid, start, end, "AnonHugePages")


# --- what one run observed ------------------------------------------------------------------------------


@dataclass
class Observation:
    """Everything a run read; None where it read nothing (its metrics are then absent)."""

    accesses: int | None = None  # accesses the guest completed (its replay's own count)
    accesses_attempted: int | None = None  # accesses it was given
    writes: int | None = None
    replay_ns: float | None = None  # wall time of the replay
    wall_seconds: float | None = None  # wall time of the whole run
    vmstat: dict[str, int] | None = None  # vmstat_delta over the run
    memcg: CgroupSample | None = None  # the run's group, read when the replay ends, before the tenants exit
    trace: TraceCounts | None = None
    # KVM's statistics when the replay ended (they count from the VM's creation, as the run's other counts
    # do from its start): the VM's and the vCPUs' summed, by name, as mmnsim.real.guest Guest.stats() gives.
    kvm: dict[str, int] | None = None
    guest_bytes: int | None = None  # the memslots' size
    guest_huge_bytes: int | None = None  # anon_huge_bytes over the memslots, at the end
    eager_releases: int | None = None  # the eager_release policy's round trips (None: no such policy)
    harness_rss_bytes: int | None = None  # the tenant processes' memory before they joined the cgroup
    ram_locked_bytes: int | None = None  # the tenants' RAM mlocked (smaps Locked), when the replay ended
    chunk_exits: int | None = None  # the guest's exits to the host during the replay (one per vCPU per chunk)


Value = int | float | None


def _vm(*fields: str) -> Callable[[Observation], Value]:
    """The sum of /proc/vmstat fields' growth; absent if the kernel has none of them."""

    def value(obs: Observation) -> Value:
        if obs.vmstat is None or not any(f in obs.vmstat for f in fields):
            return None
        return sum(obs.vmstat.get(f, 0) for f in fields)

    return value


def _memcg(fn: Callable[[CgroupSample], Value]) -> Callable[[Observation], Value]:
    return lambda obs: None if obs.memcg is None else fn(obs.memcg)


def _traced(events: tuple[str, ...], fn: Callable[[TraceCounts], Value]) -> Callable[[Observation], Value]:
    """A figure from the trace, absent unless every event it needs was enabled."""
    return lambda obs: None if obs.trace is None or not all(map(obs.trace.observed, events)) else fn(obs.trace)


def _kvm(fn: Callable[[dict[str, int]], Value]) -> Callable[[Observation], Value]:
    """A figure from KVM's statistics; absent if a statistic it needs is missing (another KVM version)."""

    def value(obs: Observation) -> Value:
        try:
            return None if obs.kvm is None else fn(obs.kvm)
        except (KeyError, ZeroDivisionError):
            return None

    return value


def _ratio(num: Value, den: Value) -> Value:
    return None if num is None or not den else num / den


UNMAP, AGE, TEST_AGE = "kvm:kvm_unmap_hva_range", "kvm:kvm_age_hva", "kvm:kvm_test_age_hva"
SHRINK, MEMCG_RECLAIM = "vmscan:mm_vmscan_lru_shrink_inactive", "vmscan:mm_vmscan_memcg_reclaim_begin"
DIRECT_RECLAIM = "vmscan:mm_vmscan_direct_reclaim_begin"


def not_other_processes(who: str) -> bool:
    """The run's threads and kernel threads: the tasks that can change the guest's mappings. Another user
    process's notifier events are its own VM's (the tracepoints fire for every VM on the machine)."""
    return not who.startswith("user:")


def guest_invalidator(who: str) -> bool:
    return not_other_processes(who) and not damon(who)


@dataclass(frozen=True)
class Source:
    """Where the twin reads one metric: ``source`` and ``caveat`` as the metric registry names them
    (mmnsim.metrics REAL_SOURCES), and ``value`` computing it (None: not observed)."""

    metric: str
    source: str
    caveat: str
    value: Callable[[Observation], Value]


def _pinned(obs: Observation) -> Value:
    """The tenants' RAM mlocked plus long-term pins held (acquired less released)."""
    if obs.ram_locked_bytes is None or obs.vmstat is None or "nr_foll_pin_acquired" not in obs.vmstat:
        return None
    pins = obs.vmstat["nr_foll_pin_acquired"] - obs.vmstat.get("nr_foll_pin_released", 0)
    return obs.ram_locked_bytes // PAGE + max(0, pins)


def _harness_locked(obs: Observation) -> Value:
    """The cgroup's unevictable memory that is not the tenants' RAM: what the tenant processes' own code
    allocated after joining, which they lock (mmnsim.real.hostmem lock_this_process)."""
    if obs.memcg is None or obs.ram_locked_bytes is None:
        return None
    return max(0, obs.memcg.stat["unevictable"] - obs.ram_locked_bytes)


# How each metric the twin observes is computed; the registry (mmnsim.metrics) says where it comes from.
VALUES: dict[str, Callable[[Observation], Value]] = {
    "accesses": lambda o: o.accesses,
    "accesses_attempted": lambda o: o.accesses_attempted,
    "accesses_failed": lambda o: None if o.accesses is None or o.accesses_attempted is None
    else o.accesses_attempted - o.accesses,
    "writes": lambda o: o.writes,
    "minor_faults": _memcg(lambda s: s.stat["pgfault"] - s.stat["pgmajfault"]),
    "major_faults": _memcg(lambda s: s.stat["pgmajfault"]),
    "swap_outs": _vm("pswpout"),
    "swap_ins": _vm("pswpin"),
    "secondary_faults": _kvm(lambda s: s["pf_fixed"]),
    "invalidations": _traced((UNMAP,), lambda t: t.calls_inside(UNMAP, guest_invalidator)),
    "young_pages_aged": _traced((AGE,), lambda t: t.pages_inside(AGE, reclaimers)),
    "tlb_flushes": _kvm(lambda s: s["remote_tlb_flush_requests"]),
    "remote_tlb_flush": _kvm(lambda s: s["remote_tlb_flush"]),
    "vcpu_tlb_flushes": _kvm(lambda s: s["tlb_flush"]),
    "pgscan": _traced((SHRINK,), lambda t: t.sum(SHRINK, "nr_scanned", reclaimers)),
    "direct_reclaims": _traced(
        (MEMCG_RECLAIM, DIRECT_RECLAIM), lambda t: t.count(MEMCG_RECLAIM, "run") + t.count(DIRECT_RECLAIM, "run")
    ),
    "kswapd_wakeups": _vm("pageoutrun"),
    "thp_fault_alloc": _vm("thp_fault_alloc"),
    "thp_fault_fallback": _vm("thp_fault_fallback"),
    "thp_split": _vm("thp_split_page"),
    "thp_swpout": _vm("thp_swpout"),
    "thp_swpout_fallback": _vm("thp_swpout_fallback"),
    "thp_collapse_alloc": _vm("thp_collapse_alloc"),
    "compact_stall": _vm("compact_stall"),
    "pages_migrated": _vm("pgmigrate_success"),
    "migrations_refused": _vm("pgmigrate_fail"),
    "pins_acquired": _vm("nr_foll_pin_acquired"),
    "pins_released": _vm("nr_foll_pin_released"),
    "cow_ksm": _vm("cow_ksm"),
    "numa_hint_faults": _vm("numa_hint_faults"),
    "numa_hint_faults_local": _vm("numa_hint_faults_local"),
    "oom_kills": _memcg(lambda s: s.oom_kills),
    "swap_used": _memcg(lambda s: s.stat["swap"] // PAGE),
    "free_frames": _memcg(lambda s: max(0, s.limit_bytes - s.usage_bytes) // PAGE),
    "resident_pages": _memcg(lambda s: s.stat["rss"] // PAGE),
    "pinned_pages": _pinned,
    "huge_mapped_fraction": _kvm(lambda s: s["pages_2m"] / (s["pages_4k"] + s["pages_2m"] + s["pages_1g"])),
    "secondary_mapped_pages": _kvm(lambda s: s["pages_4k"] + s["pages_2m"] + s["pages_1g"]),
    "thp_coverage": lambda o: _ratio(o.guest_huge_bytes, o.guest_bytes),
    "sim_time_ns": lambda o: o.replay_ns,
    "sim_time_ns_per_access": lambda o: _ratio(o.replay_ns, o.accesses),
    "wall_seconds": lambda o: o.wall_seconds,
    "eager_releases": lambda o: o.eager_releases,
}  # fmt: skip
SOURCES = tuple(Source(name, *REAL_SOURCES[name], value) for name, value in VALUES.items())
UNOBSERVED = REAL_UNOBSERVED

REAL_ONLY_VALUES: dict[str, Callable[[Observation], Value]] = {
    "pages_invalidated": _traced((UNMAP,), lambda t: t.pages_inside(UNMAP, guest_invalidator)),
    "age_calls": _traced((AGE,), lambda t: t.calls_inside(AGE, reclaimers)),
    "test_age_calls": _traced((TEST_AGE,), lambda t: t.calls_inside(TEST_AGE, guest_invalidator)),
    "damon_young_calls": _traced(
        (AGE, TEST_AGE), lambda t: t.calls_inside(AGE, damon) + t.calls_inside(TEST_AGE, damon)
    ),
    "pages_reclaimed": _traced((SHRINK,), lambda t: t.sum(SHRINK, "nr_reclaimed", reclaimers)),
    "spte_installs": _traced(("kvmmmu:kvm_mmu_set_spte",), lambda t: t.count("kvmmmu:kvm_mmu_set_spte", "run")),
    "emulated_instructions": _traced(("kvm:kvm_emulate_insn",), lambda t: t.count("kvm:kvm_emulate_insn", "run")),
    "memcg_failcnt": _memcg(lambda s: s.failcnt),
    "memcg_max_usage_bytes": _memcg(lambda s: s.max_usage_bytes),
    "wall_ns_per_access": lambda o: _ratio(None if o.wall_seconds is None else o.wall_seconds * 1e9, o.accesses),
    "harness_rss_bytes": lambda o: o.harness_rss_bytes,
    "harness_locked_bytes": _harness_locked,
    "chunk_exits": lambda o: o.chunk_exits,
    "trace_lost_events": lambda o: None if o.trace is None else o.trace.lost_events,
}


def metrics(obs: Observation) -> dict[str, int | float]:
    """Every metric ``obs`` lets the twin report, model metrics and REAL_ONLY alike; the rest are absent."""
    out: dict[str, int | float] = {}
    for name, value in [*((s.metric, s.value) for s in SOURCES), *REAL_ONLY_VALUES.items()]:
        got = value(obs)
        if got is not None:
            out[name] = got
    return out


PER_KIND_ONLY = {"huge_mapped_fraction"}  # the model reports it as <kind>.huge_mapped_fraction alone


def with_kind_columns(found: dict[str, int | float], kind: str = "kvm") -> dict[str, int | float]:
    """``found`` plus ``<kind>.<metric>`` for each metric the model also reports per secondary MMU kind (the
    twin has one secondary MMU, the guest's KVM, so the two are equal), as the simulator's summary has them."""
    per_kind = {m.name for m in FRAMEWORK if m.per_secondary} | {"young_pages_aged"}
    out = {k: v for k, v in found.items() if k not in PER_KIND_ONLY}
    return {**out, **{f"{kind}.{k}": v for k, v in found.items() if k in per_kind}}


def markdown() -> str:
    """The metric-to-source table for docs/real.md."""
    lines = ["| metric | real source | caveat |", "|---|---|---|"]
    lines += [f"| `{s.metric}` | {s.source} | {s.caveat} |" for s in SOURCES]
    lines += [f"| `{m.name}` (twin only) | {m.kernel} | {m.meaning} |" for m in REAL_ONLY]
    lines += ["", "Not observed (null in the twin's results):", ""]
    lines += [f"- `{name}`: {why}" for name, why in UNOBSERVED.items()]
    return "\n".join(lines)
