"""The kernel's counters, read for the real twin, and the real source of every mmnsim metric.

Readings: ``read_vmstat``/``vmstat_delta`` (/proc/vmstat; mm/vmstat.c vmstat_text), the run's cgroup
(``cgroup.CgroupSample``), the tracing instance's counts (``tracing.TraceCounts``), KVM's binary
statistics (read by the KVM module through KVM_GET_STATS_FD; passed in here as dicts), and the tenants'
own fault counts (``process_faults``, ``thread_faults``, ``rusage_faults``; fs/proc/array.c do_task_stat,
charged by mm/memory.c mm_account_fault to the task that faulted, KVM's get_user_pages faults included).

``SOURCES`` maps each mmnsim metric the twin can observe (same name, same meaning as the model's; see
framework/metrics.py) to its source, with the caveats; ``UNOBSERVED`` names each metric it cannot
observe and why: such a metric is **absent** from the twin's results, never 0. ``REAL_ONLY`` declares
what only the twin reports (lost trace events, young-op calls, DAMON's share, ...). ``metrics(obs)``
computes them all from one ``Observation``; a source not read leaves its metric absent.

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

from ..metrics import FRAMEWORK, Metric
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


def anon_huge_bytes(pid: int, start: int, end: int) -> int:
    """AnonHugePages of process ``pid``'s mappings inside ``[start, end)`` (a memslot), from
    /proc/PID/smaps (fs/proc/task_mmu.c show_smap): the guest memory a THP backs now."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo >= start and hi <= end
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total


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
    """Where the twin reads one metric: ``source`` as the metric registry names it, what differs from the
    model's meaning in ``caveat``, and ``value`` computing it (None: not observed)."""

    metric: str
    source: str
    caveat: str
    value: Callable[[Observation], Value]


SOURCES = (
    Source("accesses", "the guest's replay", "accesses in the chunks the guest completed", lambda o: o.accesses),
    Source("accesses_attempted", "the guest's replay", "accesses the guest was given", lambda o: o.accesses_attempted),
    Source(
        "accesses_failed",
        "the guest's replay",
        "given minus completed: a guest killed (OOM) mid-run",
        lambda o: None if o.accesses is None or o.accesses_attempted is None else o.accesses_attempted - o.accesses,
    ),
    Source("writes", "the guest's replay", "writes in the access list the guest completed", lambda o: o.writes),
    Source(
        "minor_faults",
        "memory.stat pgfault - pgmajfault (the run's cgroup)",
        "every fault of the tenants' tasks, KVM's get_user_pages faults for the guest included "
        "(mm_account_fault), but also the harness code's own in the tenant processes and faults that failed",
        _memcg(lambda s: s.stat["pgfault"] - s.stat["pgmajfault"]),
    ),
    Source(
        "major_faults",
        "memory.stat pgmajfault (the run's cgroup)",
        "faults that read from swap (do_swap_page) or, rarely, read a file page from disk (filemap_fault)",
        _memcg(lambda s: s.stat["pgmajfault"]),
    ),
    Source(
        "swap_outs",
        "/proc/vmstat pswpout",
        "machine-wide: exact while nothing else on the machine swaps",
        _vm("pswpout"),
    ),
    Source(
        "swap_ins",
        "/proc/vmstat pswpin",
        "machine-wide; counts swap readahead's pages too (swapin_readahead), some never used",
        _vm("pswpin"),
    ),
    Source(
        "secondary_faults",
        "KVM vCPU statistic pf_fixed, summed over vCPUs",
        "shadow-MMU faults that installed an spte; one fault maps up to 8 (prefetch: kvmmmu:kvm_mmu_set_spte "
        "counts entries); pf_taken also counts faults that retried or were emulated",
        _kvm(lambda s: s["pf_fixed"]),
    ),
    Source(
        "invalidations",
        f"trace {UNMAP}: calls meeting the memslots",
        "one per invalidate_range_start KVM received for guest RAM, by the run's threads or a kernel thread "
        "(not another process's VM, not DAMON); a kernel thread's call for another VM at the same host "
        "addresses would count too (the event names no VM); calls for the harness's own memory in the mm are "
        "left out, which the model does not have",
        _traced((UNMAP,), lambda t: t.calls_inside(UNMAP, guest_invalidator)),
    ),
    Source(
        "young_pages_aged",
        f"trace {AGE}: pages meeting the memslots, by reclaim",
        "pages of clear_flush_young calls from reclaim (the run's threads in memcg direct reclaim, and kswapd);"
        " DAMON's aging is apart (damon_young_calls)",
        _traced((AGE,), lambda t: t.pages_inside(AGE, reclaimers)),
    ),
    Source(
        "tlb_flushes",
        "KVM VM statistic remote_tlb_flush_requests",
        "every kvm_flush_remote_tlbs call, the notifier's and the shadow MMU's own (zapped shadow pages, "
        "write protection); remote_tlb_flush counts those that sent requests",
        _kvm(lambda s: s["remote_tlb_flush_requests"]),
    ),
    Source(
        "pgscan",
        f"trace {SHRINK}: nr_scanned by reclaim",
        "pages isolated from the inactive lists, as the kernel's pgscan; v1 memory.stat has none and "
        "/proc/vmstat leaves out reclaim under a cgroup limit",
        _traced((SHRINK,), lambda t: t.sum(SHRINK, "nr_scanned", reclaimers)),
    ),
    Source(
        "direct_reclaims",
        f"trace {MEMCG_RECLAIM} + {DIRECT_RECLAIM} by the run's threads",
        "calls of try_to_free_mem_cgroup_pages (or global direct reclaim): try_charge_memcg calls it up to "
        "MAX_RECLAIM_RETRIES + 1 times for one charge, the model counts allocations",
        _traced(
            (MEMCG_RECLAIM, DIRECT_RECLAIM), lambda t: t.count(MEMCG_RECLAIM, "run") + t.count(DIRECT_RECLAIM, "run")
        ),
    ),
    Source(
        "kswapd_wakeups", "/proc/vmstat pageoutrun", "machine-wide; a cgroup limit wakes no kswapd", _vm("pageoutrun")
    ),
    Source("thp_fault_alloc", "/proc/vmstat thp_fault_alloc", "machine-wide", _vm("thp_fault_alloc")),
    Source("thp_fault_fallback", "/proc/vmstat thp_fault_fallback", "machine-wide", _vm("thp_fault_fallback")),
    Source(
        "thp_split",
        "/proc/vmstat thp_split_page",
        "machine-wide; thp_split_pmd counts PMD splits that keep the page whole",
        _vm("thp_split_page"),
    ),
    Source("thp_collapse_alloc", "/proc/vmstat thp_collapse_alloc", "machine-wide", _vm("thp_collapse_alloc")),
    Source(
        "compact_stall",
        "/proc/vmstat compact_stall",
        "machine-wide; direct compactions of any order",
        _vm("compact_stall"),
    ),
    Source("pages_migrated", "/proc/vmstat pgmigrate_success", "machine-wide", _vm("pgmigrate_success")),
    Source("migrations_refused", "/proc/vmstat pgmigrate_fail", "machine-wide", _vm("pgmigrate_fail")),
    Source(
        "pins_acquired",
        "/proc/vmstat nr_foll_pin_acquired",
        "machine-wide; KVM takes none; the pin mode's io_uring stand-in does (pin_user_pages), its mlock fallback not",
        _vm("nr_foll_pin_acquired"),
    ),
    Source("pins_released", "/proc/vmstat nr_foll_pin_released", "machine-wide", _vm("nr_foll_pin_released")),
    Source("cow_ksm", "/proc/vmstat cow_ksm", "machine-wide; present with CONFIG_KSM", _vm("cow_ksm")),
    Source(
        "numa_hint_faults",
        "/proc/vmstat numa_hint_faults",
        "machine-wide; present with NUMA balancing",
        _vm("numa_hint_faults"),
    ),
    Source(
        "numa_hint_faults_local", "/proc/vmstat numa_hint_faults_local", "machine-wide", _vm("numa_hint_faults_local")
    ),
    Source(
        "oom_kills",
        "memory.oom_control oom_kill (the run's cgroup)",
        "the group's OOM kills only",
        _memcg(lambda s: s.oom_kills),
    ),
    Source(
        "swap_used",
        "memory.stat swap / page size (the run's cgroup)",
        "swap space charged to the tenants when the replay ended",
        _memcg(lambda s: s.stat["swap"] // PAGE),
    ),
    Source(
        "free_frames",
        "(memory.limit_in_bytes - memory.usage_in_bytes) / page size",
        "the limited host's room when the replay ended; usage counts page cache and kernel memory too",
        _memcg(lambda s: max(0, s.limit_bytes - s.usage_bytes) // PAGE),
    ),
    Source(
        "resident_pages",
        "memory.stat rss / page size (the run's cgroup)",
        "anonymous memory and swap cache of the tenants, THPs included",
        _memcg(lambda s: s.stat["rss"] // PAGE),
    ),
    Source(
        "pinned_pages",
        "memory.stat unevictable / page size (the run's cgroup)",
        "mlocked pages: the pin mode's stand-in",
        _memcg(lambda s: s.stat["unevictable"] // PAGE),
    ),
    Source(
        "huge_mapped_fraction",
        "KVM VM statistics pages_2m / (pages_4k + pages_2m + pages_1g)",
        "sptes by size when the replay ended",
        _kvm(lambda s: s["pages_2m"] / (s["pages_4k"] + s["pages_2m"] + s["pages_1g"])),
    ),
    Source(
        "secondary_mapped_pages",
        "KVM VM statistics pages_4k + pages_2m + pages_1g",
        "sptes present when read",
        _kvm(lambda s: s["pages_4k"] + s["pages_2m"] + s["pages_1g"]),
    ),
    Source(
        "thp_coverage",
        "/proc/PID/smaps AnonHugePages over the memslots / their size",
        "when the replay ended",
        lambda o: _ratio(o.guest_huge_bytes, o.guest_bytes),
    ),
    Source(
        "sim_time_ns",
        "the replay's wall time",
        "this machine's time: it is itself a guest, every exit costly",
        lambda o: o.replay_ns,
    ),
    Source(
        "sim_time_ns_per_access",
        "the replay's wall time / accesses",
        "as sim_time_ns",
        lambda o: _ratio(o.replay_ns, o.accesses),
    ),
    Source(
        "wall_seconds", "the run's wall time", "the whole run: setup, boot pass and teardown", lambda o: o.wall_seconds
    ),
)

_MODEL_ONLY = "the model's own bookkeeping: nothing of the kernel's corresponds"
_NO_TRUTH = "needs the ground truth of which frame holds which page, which only the model has"
UNOBSERVED = {
    "fault_retries": "KVM keeps no statistic of RET_PF_RETRY (kvm_mmu_page_fault retries silently)",
    "alloc_failures": "a failed charge ends in the group's OOM killer or SIGBUS: no counter",
    "oom_events": "cgroup v1 has no memory.events; out_of_memory() has no tracepoint (oom_kills is observed)",
    "access_errors": "the guest's replay has no failing access: a fault it cannot take stops the run",
    "isolation_violations": _NO_TRUTH,
    "coherence_violations": _NO_TRUTH,
    "stale_reads": _NO_TRUTH,
    "stale_writes": _NO_TRUTH,
    "foreign_writes": _NO_TRUTH,
    "remote_accesses": "the frame behind each guest access is not observable",
    "access_distance": "the frame behind each guest access is not observable",
    "remote_access_fraction": "the frame behind each guest access is not observable",
    "effective_access_ns": "a model figure (access_ns by NUMA distance)",
    "pin_skipped": "reclaim counts no skipped pinned folios",
    "compact_success": "the kernel's compact_success counts compaction runs, the model's pageblocks emptied",
    "compact_fail": "the kernel's compact_fail counts compaction runs, the model's pageblocks a pin kept",
    "huge_accesses": "the guest cannot tell which of its accesses went through a 2 MiB mapping",
    "invalidations_refused": "only non-blockable invalidations (the OOM reaper) can be refused; no counter",
    "swap_write_errors": "no counter of failed swap writes (a disk error is logged)",
    "swap_read_errors": "no counter of failed swap reads",
    **{
        f"invalidations_{e}": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does"
        for e in (
            "unmap",
            "clear",
            "protection_vma",
            "protection_page",
            "soft_dirty",
            "release",
            "migrate",
            "exclusive",
        )
    },
    "oom_reaper_refusals": "no counter (the reaper logs and retries)",
    "oom_reaped_pages": "the oom:finish_task_reaping event reports the victim's RSS, not pages torn down per range",
    "invalidate_page_calls": "the invalidate_page op was removed in 4.13; kernel=2008 only",
    "race_windows": "a model parameter (engine.race_window), not an event",
    "oom_ticks": _MODEL_ONLY,
    "pages_zapped": "the shadow MMU has no per-spte zap tracepoint; pages_invalidated counts the pages KVM was told",
    "tlb_flush_ipis": "KVM counts no kicks (vcpu_tlb_flushes counts flushes the vCPUs took)",
    "flush_cost_ns": "a model cost",
    "translation_ns": "a model cost (page walks)",
    "translation_ns_per_access": "a model cost (page walks)",
    "forced_pin": "kernel=2008 only",
    "pinned_pages_peak": "sampled per tick in the model; the real run samples once",
    "integrity_violations": _NO_TRUTH,
    "pin_violations": _NO_TRUTH,
    "conservation_violations": _NO_TRUTH,
    "accessed_violations": _NO_TRUTH,
    "permission_violations": _NO_TRUTH,
    "invariant_violations": _NO_TRUTH,
    "tick": _MODEL_ONLY,
    "ticks": _MODEL_ONLY,
    "oom_victims": "the OOM killer names its victims in the kernel log; oom_kills counts them",
    "host_cpu_ns": "a model figure; the host's CPU time is not split by purpose",
    "guest_stall_ns": "a model figure",
    "stall_fraction": "a model figure",
    "change_pte_applied": "change_pte was removed in 6.9; this kernel has no such callback",
}


def _real(name: str, unit: str, meaning: str, source: str) -> Metric:
    return Metric(name, unit, int, meaning, kernel=source)


# Declarations for the twin's registry: figures only the real kernel gives, with their sources.
REAL_ONLY = (
    _real(
        "pages_invalidated",
        "pages",
        "guest pages in the invalidations KVM received (notifier ranges met with the "
        "memslots, by the run's threads and kernel threads)",
        f"trace {UNMAP}",
    ),
    _real("age_calls", "calls", "clear(_flush)_young calls on guest memory by reclaim", f"trace {AGE}"),
    _real(
        "test_age_calls",
        "calls",
        "test_young calls on guest memory, DAMON's left out (khugepaged's)",
        f"trace {TEST_AGE}",
    ),
    _real(
        "damon_young_calls",
        "calls",
        "DAMON's kdamond's young-op calls on guest memory (age and test-age)",
        f"trace {AGE}, {TEST_AGE} by kdamond",
    ),
    _real(
        "pages_reclaimed",
        "pages",
        "pages reclaim freed from the inactive lists (the kernel's pgsteal)",
        f"trace {SHRINK} nr_reclaimed",
    ),
    _real(
        "spte_installs",
        "sptes",
        "shadow-MMU entries installed by the run's vCPUs (prefetch included)",
        "trace kvmmmu:kvm_mmu_set_spte",
    ),
    _real(
        "emulated_instructions",
        "instructions",
        "guest instructions KVM emulated: a natively running guest's exits to the host alone (one `out` per chunk)",
        "trace kvm:kvm_emulate_insn",
    ),
    _real("vcpu_tlb_flushes", "flushes", "TLB flushes the vCPUs took on entry, summed", "KVM vCPU statistic tlb_flush"),
    _real("memcg_failcnt", "charges", "charges that hit the cgroup limit", "memory.failcnt"),
    _real("memcg_max_usage_bytes", "bytes", "the cgroup's peak charge", "memory.max_usage_in_bytes"),
    _real(
        "trace_lost_events",
        "events",
        "trace events the ring buffer lost (overrun, dropped): counts from the trace are low by at most this much",
        "per_cpu/cpuN/stats",
    ),
)

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
    "vcpu_tlb_flushes": _kvm(lambda s: s["tlb_flush"]),
    "memcg_failcnt": _memcg(lambda s: s.failcnt),
    "memcg_max_usage_bytes": _memcg(lambda s: s.max_usage_bytes),
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
    lines += ["", "Not observed (absent from the twin's results):", ""]
    lines += [f"- `{name}`: {why}" for name, why in UNOBSERVED.items()]
    return "\n".join(lines)
