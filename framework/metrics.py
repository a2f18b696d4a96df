"""Every metric a run reports, declared once: its unit, integer, float or text, a one-line meaning, and the
kernel counter it corresponds to where one exists.

The framework's metrics are ``FRAMEWORK`` below (the event counters of ``mmnsim.counters``, the gauges of
the host, the time model's figures and what is derived from them). A plugin declares its own in its
module, on its component class::

    class KSM(HostPolicy):
        name = "ksm"
        declared_metrics = (
            Metric("ksm_merges", "pages", int, "pages merged into a KSM page", kernel="pages_sharing"),
        )

(a plugin module with a module-level ``collect_metrics`` sets a module-level ``declared_metrics``). A
secondary MMU's metrics are also reported per kind, as ``<kind>.<metric>`` (``kvm.tlb_flushes``), and so
are the framework metrics marked ``per_secondary``. A metric reported but not declared stops the run with
an error naming the plugin and where to declare it; the summary's column types follow the declarations
(an ``int`` metric is an integer column).

``mmnsim-report --metrics-doc > docs/metrics.md`` writes docs/metrics.md from these declarations (a test
keeps it current); ``mmnsim-report --explain NAME`` prints one entry.
"""

import difflib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .invariants import KINDS
from .notifier import PluginError


@dataclass(frozen=True)
class Metric:
    """One metric: ``type`` is ``int`` (a count: an integer column), ``float`` or ``str``."""

    name: str
    unit: str  # "pages", "ns", "accesses", "fraction", ...
    type: type
    meaning: str  # one line
    kernel: str = ""  # the kernel counter it corresponds to (vmstat, /sys/kernel/mm/..., KVM stats), if any
    per_secondary: bool = False  # also reported per secondary MMU kind, as "<kind>.<name>"

    def __post_init__(self) -> None:
        if self.type not in (int, float, str):
            raise TypeError(f"metric {self.name!r}: type must be int, float or str, not {self.type!r}")
        if not self.name or "." in self.name or not self.meaning:
            raise ValueError(f"metric {self.name!r}: needs a name without dots and a meaning")

    def explain(self, declared_by: str = "") -> str:
        """One entry, as ``mmnsim-report --explain`` prints it."""
        lines = [f"{self.name}: {self.meaning}", f"  unit: {self.unit}; {self.type.__name__}"]
        if self.kernel:
            lines.append(f"  kernel counter: {self.kernel}")
        if self.per_secondary:
            lines.append(f"  also per secondary MMU kind, as <kind>.{self.name} (e.g. kvm.{self.name})")
        if declared_by:
            lines.append(f"  declared by: {declared_by}")
        return "\n".join(lines)


def _m(name: str, unit: str, type_: type, meaning: str, kernel: str = "", per_secondary: bool = False) -> Metric:
    return Metric(name, unit, type_, meaning, kernel, per_secondary)


# The event counters (mmnsim.counters.NAMES, the numba kernels' array; a test checks each is here).
COUNTERS = (
    _m("accesses", "accesses", int, "client accesses completed (hits and faulted-in alike); per-access rates "
       "divide by it", per_secondary=True),
    _m("accesses_attempted", "accesses", int, "client accesses issued: completed plus failed", per_secondary=True),
    _m("writes", "accesses", int, "completed accesses that wrote", per_secondary=True),
    _m("secondary_faults", "faults", int, "misses in a secondary MMU's table, resolved through the primary table "
       "(for an SVA device, its I/O page faults)", kernel="KVM pf_taken", per_secondary=True),
    _m("minor_faults", "faults", int, "primary faults that needed no I/O (first touch of anonymous memory)",
       kernel="pgfault - pgmajfault", per_secondary=True),
    _m("major_faults", "faults", int, "primary faults that read the page from swap", kernel="pgmajfault",
       per_secondary=True),
    _m("swap_ins", "pages", int, "pages read back from swap", kernel="pswpin"),
    _m("swap_outs", "pages", int, "pages written to swap and unmapped", kernel="pswpout"),
    _m("fault_retries", "faults", int, "secondary faults discarded because an invalidation ran meanwhile "
       "(mmu_invalidate_retry_gfn)", kernel="KVM RET_PF_RETRY (no stat)", per_secondary=True),
    _m("pins_acquired", "pins", int, "long-term pins taken (FOLL_PIN)", kernel="nr_foll_pin_acquired",
       per_secondary=True),
    _m("pins_released", "pins", int, "long-term pins dropped", kernel="nr_foll_pin_released"),
    _m("alloc_failures", "allocations", int, "page allocations that failed after reclaim (their access failed), "
       "including device memory that found no room in RAM"),
    _m("oom_events", "allocations", int, "out_of_memory() invocations: allocations that found no memory after "
       "reclaim made no progress, each counted once, whether it then failed or the OOM killer freed memory "
       "for it (one that killed and still failed counts twice)", kernel="memory.events oom (MEMCG_OOM)"),
    _m("access_errors", "accesses", int, "accesses refused: no VMA, the VMA forbids it, or a device without "
       "fault support found no entry (SIGSEGV / -EFAULT)", per_secondary=True),
    _m("isolation_violations", "violations", int, "a client used a frame that is free or belongs to another mm: "
       "found by the per-tick check, or per access with engine.check_accesses"),
    _m("coherence_violations", "violations", int, "a client used a translation the primary table no longer "
       "agrees with: found by the per-tick check, or per access with engine.check_accesses"),
    _m("remote_accesses", "accesses", int, "completed accesses served by a frame on another NUMA node than the "
       "accessor's", per_secondary=True),
    _m("numa_hint_faults", "faults", int, "faults on PROT_NONE NUMA hinting entries", kernel="numa_hint_faults"),
    _m("numa_hint_faults_local", "faults", int, "hinting faults whose page was on the faulting CPU's node",
       kernel="numa_hint_faults_local"),
    _m("access_distance", "SLIT units", int, "sum over completed accesses of the SLIT distance from accessor to "
       "frame (10 local, 20 remote by default); counted on NUMA hosts only, 0 on one node"),
    _m("pgscan", "frames", int, "frames examined by reclaim", kernel="pgscan_kswapd + pgscan_direct"),
    _m("pin_skipped", "frames", int, "reclaim candidates skipped because they are pinned"),
    _m("invalidations", "ranges", int, "ranges delivered to a non-empty notifier chain by invalidate_range_start "
       "(or an interval invalidate)"),
    _m("thp_fault_alloc", "THPs", int, "transparent huge pages allocated at fault time", kernel="thp_fault_alloc"),
    _m("thp_split", "THPs", int, "THPs split back into 4 KiB mappings", kernel="thp_split_page"),
    _m("thp_collapse_alloc", "THPs", int, "THPs khugepaged built", kernel="thp_collapse_alloc"),
    _m("thp_swpout", "THPs", int, "THPs reclaim found old as a whole and wrote to swap whole, into a free swap "
       "cluster of 512 slots (their PMD split into swap entries, their pageblock freed)", kernel="thp_swpout"),
    _m("thp_swpout_fallback", "THPs", int, "old THPs reclaim split to swap out as 4 KiB pages, no swap cluster "
       "being free (each also counts in thp_split)", kernel="thp_swpout_fallback"),
    _m("secondary_prefetched", "entries", int, "entries a secondary fault mapped beside its own, for neighbours "
       "the primary table already mapped (KVM's shadow MMU: FNAME(pte_prefetch), up to 8 per fault; not TDP)",
       kernel="kvmmmu:kvm_mmu_set_spte events less pf_fixed", per_secondary=True),
    _m("compact_success", "pageblocks", int, "pageblocks compaction emptied"),
    _m("compact_fail", "pageblocks", int, "pageblocks compaction could not empty because a page in them is pinned"),
    _m("huge_accesses", "accesses", int, "completed accesses through a 2 MiB mapping (a THP's PMD, or a huge "
       "secondary entry)", per_secondary=True),
    _m("pages_migrated", "pages", int, "pages migrated to another node or device memory", kernel="pgmigrate_success"),
    _m("migrations_refused", "pages", int, "migrations refused: the page is pinned, or the target node has no "
       "free frame", kernel="pgmigrate_fail"),
    _m("kswapd_wakeups", "wakeups", int, "times kswapd was woken at the low watermark", kernel="pageoutrun"),
    _m("direct_reclaims", "stalls", int, "allocations that entered direct reclaim at the min watermark",
       kernel="allocstall"),
    _m("cow_ksm", "pages", int, "copies made by a write (or a long-term pin) to a shared KSM page",
       kernel="cow_ksm"),
    _m("invalidations_refused", "batches", int, "non-blockable invalidation batches a subscriber refused "
       "(-EAGAIN): the operation was not done"),
    _m("swap_write_errors", "pages", int, "swap-outs whose write failed: the page stayed resident"),
    _m("swap_read_errors", "accesses", int, "swap-ins whose read failed: the access failed, the page stays in swap"),
    *(
        _m(f"invalidations_{event}", "ranges", int, f"invalidation ranges raised with event "
           f"MMU_NOTIFY_{event.upper()}", kernel=f"enum mmu_notifier_event MMU_NOTIFY_{event.upper()}")
        for event in ("unmap", "clear", "protection_vma", "protection_page", "soft_dirty", "release", "migrate",
                      "exclusive")
    ),
    _m("oom_kills", "tenants", int, "tenants the OOM killer killed", kernel="oom_kill"),
    _m("oom_reaper_refusals", "ranges", int, "OOM-reaper ranges a subscriber refused (non-blockable): skipped, "
       "retried later"),
    _m("oom_reaped_pages", "pages", int, "pages (present or swapped) the OOM reaper tore down"),
    _m("invalidate_page_calls", "pages", int, "pages told through 2.6.27's invalidate_page op (kernel=2008: "
       "reclaim and migration, one call per page, no start/end); also counted in invalidations"),
    _m("stale_reads", "accesses", int, "with engine.check_accesses: reads through a secondary entry whose frame no "
       "longer holds the page (freed or reused memory: the unpinned strawman, or a buggy plugin)"),
    _m("stale_writes", "accesses", int, "with engine.check_accesses: writes through such an entry"),
    _m("foreign_writes", "accesses", int, "of stale_writes, those that landed in another tenant's page"),
    _m("compact_stall", "compactions", int, "direct compactions run by a THP fault in MADV_HUGEPAGE memory",
       kernel="compact_stall"),
    _m("thp_fault_fallback", "faults", int, "THP faults that fell back to a 4 KiB page: no free pageblock, even "
       "after direct compaction", kernel="thp_fault_fallback"),
    _m("race_windows", "faults", int, "secondary faults that slept between resolving and installing while the "
       "host reclaimed their page (engine.race_window)"),
    _m("oom_ticks", "ticks", int, "ticks in which at least one allocation hit out of memory (oom_events > 0)"),
)  # fmt: skip

_KIND_MEANING = {
    "integrity": "a page's content is not where its PTE says (its frame or swap slot)",
    "pin": "a pinned frame is free, or a pin is held by no secondary entry that says so",
    "conservation": "frames or swap slots leaked or counted twice",
    "accessed": "a secondary MMU answered a young op against its entries' accessed bits",
}

# Metrics that do not come from the counter array: what secondary MMUs add up, the host's gauges, the time
# model and what is derived.
OTHERS = (
    _m("accesses_failed", "accesses", int, "accesses issued that did not complete (accesses_attempted - "
       "accesses): allocation failures, access errors, swap read errors; runs that differ in it did "
       "different work (a tenant the OOM killer killed issues no more: see oom_kills)", per_secondary=True),
    _m("pages_zapped", "pages", int, "secondary MMU entries dropped by invalidations, aging excluded",
       per_secondary=True),
    _m("tlb_flushes", "flushes", int, "TLB flushes secondary MMUs made after zapping (KVM: remote TLB flush "
       "requests; RDMA: translation-cache invalidations; GPU/IOMMU: TLB invalidations)",
       kernel="KVM remote_tlb_flush_requests", per_secondary=True),
    _m("tlb_flush_ipis", "IPIs", int, "vCPU kicks the flushes sent: one per request to each vCPU in guest mode (a "
       "vCPU whose thread is in the host serving a fault gets none; it flushes at its next entry). An expected "
       "count: each vCPU is in guest mode for the share of its time its own accesses and its faults' world "
       "switches take (Client.in_guest; KVM: secondary.guest_mode_ns a fault)",
       per_secondary=True),
    _m("remote_tlb_flush", "flushes", int, "remote TLB-flush requests that sent an IPI to a vCPU in guest mode (a "
       "request while every vCPU is in the host sends none)", kernel="KVM remote_tlb_flush", per_secondary=True),
    _m("vcpu_tlb_flushes", "flushes", int, "TLB flushes the vCPUs performed: one per request each vCPU in guest "
       "mode was kicked for, one per fault for a vCPU that missed requests while in the host", kernel="KVM vCPU "
       "tlb_flush, summed", per_secondary=True),
    _m("flush_cost_ns", "ns", float, "what the flushes cost, the flushing CPU's and the stalled clients' time "
       "together", per_secondary=True),
    _m("translation_ns", "ns", float, "modelled page-walk time of the completed accesses' TLB misses, all CPUs "
       "together (included in sim_time_ns)", per_secondary=True),
    _m("translation_ns_per_access", "ns/access", float, "translation_ns / accesses", per_secondary=True),
    _m("huge_mapped_fraction", "fraction", float, "share of a secondary MMU's entries that map 2 MiB "
       "(reported per kind only)", per_secondary=True),
    _m("forced_pin", "devices", int, "devices that had to pin for want of interval notifiers (kernel=2008)",
       per_secondary=True),
    _m("pinned_pages", "pages", int, "frames pinned at the end of the run"),
    _m("pinned_pages_peak", "pages", int, "the most frames pinned at once, sampled every tick"),
    _m("swap_used", "slots", int, "swap slots in use at the end of the run"),
    _m("free_frames", "frames", int, "free RAM frames at the end of the run", kernel="nr_free_pages"),
    _m("resident_pages", "pages", int, "pages with a frame, over all mms (time series only)", kernel="RSS"),
    _m("secondary_mapped_pages", "pages", int, "entries present in secondary MMU tables (time series only)"),
    *(
        _m(f"{kind}_violations", "violations", int, f"{kind} invariant violations: {_KIND_MEANING.get(kind, 'see')} "
           "(framework/invariants.py)")
        for kind in KINDS
        if f"{kind}_violations" not in {m.name for m in COUNTERS}
    ),
    _m("invariant_violations", "violations", int, "all invariant violations, every kind together"),
    _m("tick", "ticks", int, "the tick a time-series row was sampled at (time series only)"),
    _m("ticks", "ticks", int, "ticks the run lasted"),
    _m("oom_victims", "text", str, "the OOM killer's kills: victim, simulated time, tick, badness, and whether the "
       "reaper got its memory; empty if none"),
    _m("sim_time_ns", "ns", float, "simulated wall-clock time of the run: per tick, the slowest client's time, "
       "its CPUs working in parallel (docs/time.md)"),
    _m("sim_time_ns_per_access", "ns/access", float, "sim_time_ns / accesses: simulated wall-clock time per "
       "completed access, every CPU's accesses counted (a 4-vCPU guest completes about 4 in this time, so one "
       "vCPU's access takes about 4 times as long); compares runs that completed different amounts of work "
       "(docs/time.md)"),
    _m("host_cpu_ns", "ns", float, "host work outside the clients' time: kswapd, policies' scans, KSM "
       "(docs/time.md)"),
    _m("guest_stall_ns", "ns", float, "the clients' time not spent on their own accesses: faults, flush IPIs, "
       "direct reclaim, per CPU, summed over clients (docs/time.md)"),
    _m("stall_fraction", "fraction", float, "guest_stall_ns over the clients' whole time (docs/time.md)"),
    _m("thp_coverage", "fraction", float, "share of guest pages (all tenants' without a guest) mapped by a THP at "
       "the end"),
    _m("remote_access_fraction", "fraction", float, "remote_accesses / accesses"),
    _m("effective_access_ns", "ns/access", float, "memory access time of one completed access on the CPU that "
       "makes it (not divided among CPUs, unlike sim_time_ns_per_access), by NUMA distance (access_ns x distance "
       "/ 10); excludes faults, translation and stalls (docs/time.md)"),
    _m("wall_seconds", "s", float, "wall-clock time the run took on this machine (not simulated), numba's "
       "compilation included"),
    _m("compile_seconds", "s", float, "of wall_seconds, the time numba spent compiling kernels (the first run "
       "after installing or editing mmnsim; 0 once they are cached); the speed mmnsim prints excludes it"),
)  # fmt: skip

FRAMEWORK = (*COUNTERS, *OTHERS)
TIMESERIES_ONLY = ("tick", "resident_pages", "secondary_mapped_pages")  # sampled per tick, no summary column
PER_KIND_ONLY = ("huge_mapped_fraction",)  # a summary column only as <kind>.huge_mapped_fraction

# Declared by every device that registers (pins) its region up front: rdma, gpu, vfio (``populate``).
REGISTRATION_METRICS = (
    _m("registered_pages", "pages", int, "pages pinned at registration (pin mode: userptr, ibv_reg_mr, "
       "VFIO_IOMMU_MAP_DMA)"),
    _m("registration_failures", "registrations", int, "registrations that failed whole (RLIMIT_MEMLOCK, or a "
       "page that could not be faulted in): every pin taken is released"),
)  # fmt: skip
WHERE_FRAMEWORK = (
    "framework/metrics.py, in COUNTERS if it is a counter of mmnsim.counters, else in OTHERS "
    "(then `mmnsim-report --metrics-doc > docs/metrics.md`)"
)


class MetricError(PluginError):
    """A metric reported without a declaration, declared twice differently, or with a value of the wrong type."""


@dataclass
class Catalogue:
    """Every declared metric by name, and who declared it."""

    metrics: dict[str, Metric]
    declared_by: dict[str, list[str]]

    def get(self, name: str) -> Metric | None:
        """The declaration of a metric column, ``<kind>.<metric>`` per secondary MMU kind included."""
        if name in self.metrics:
            return self.metrics[name]
        kind, dot, base = name.partition(".")
        found = self.metrics.get(base) if dot else None
        return found if found is not None and (found.per_secondary or self.declared_by[base] != ["framework"]) else None

    def closest(self, name: str, n: int = 5) -> list[str]:
        return difflib.get_close_matches(name, list(self.metrics), n=n, cutoff=0.5)

    def explain(self, name: str) -> str:
        metric = self.get(name)
        if metric is None:
            near = self.closest(name.partition(".")[2] or name)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise MetricError(f"no metric {name!r} is declared{hint}")
        return metric.explain(", ".join(self.declared_by[metric.name])) + real_source(metric.name)

    def coerce(self, name: str, value: Any, who: str, where: str) -> Any:
        """``value`` as the declared type. An undeclared name, or a fractional value of a count, is an error
        naming ``who`` reported it and ``where`` to declare it."""
        metric = self.get(name)
        if metric is None:
            raise MetricError(f"{who} reports the metric {name!r}, which is not declared: {where}")
        if metric.type is int:
            if isinstance(value, float) and not value.is_integer():
                raise MetricError(f"{who} reports {name}={value}, but {name} is declared a count (int)")
            return int(value)
        return metric.type(value)


def where_to_declare(plugin: object | None) -> str:
    """The message's advice: where the declaration of a metric reported by ``plugin`` (None: the framework) goes."""
    if plugin is None:
        return f"declare it in {WHERE_FRAMEWORK}"
    cls = plugin if isinstance(plugin, type) or inspect.ismodule(plugin) else type(plugin)
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        path = None
    attr = "declared_metrics" if inspect.ismodule(cls) else f"{cls.__qualname__}.declared_metrics"
    return (f"add Metric(NAME, UNIT, int or float, 'one-line meaning', kernel='counter if any') to {attr}"
            f"{f' in {path}' if path else ''} (docs/plugins.md, 'Costs and metrics')")  # fmt: skip


def plugin_declarations(plugins: Iterable[object]) -> list[tuple[str, Metric]]:
    """``(declarer, metric)`` for every plugin object (module or component class) that declares metrics."""
    out: dict[tuple[str, str], Metric] = {}
    for plugin in plugins:
        if isinstance(plugin, type):  # the class that wrote the declaration (a subclass inherits it)
            plugin = next((k for k in plugin.__mro__ if "declared_metrics" in vars(k)), plugin)
        for metric in getattr(plugin, "declared_metrics", ()) or ():
            if not isinstance(metric, Metric):
                raise MetricError(f"{describe(plugin)}: declared_metrics holds {metric!r}, not an mmnsim.Metric")
            out[describe(plugin), metric.name] = metric
    return [(who, metric) for (who, _), metric in out.items()]


def describe(plugin: object) -> str:
    """A plugin object as the messages name it: ``module.Class`` for a class or instance, else the module."""
    if inspect.ismodule(plugin):
        return f"module {plugin.__name__}"
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def catalogue(declarations: Iterable[tuple[str, Metric]] = ()) -> Catalogue:
    """The framework's metrics, the real twin's own (REAL_ONLY) and the plugins' declarations. A plugin may not
    redeclare a framework metric, and two plugins declaring one name must agree on its unit and type."""
    metrics = {m.name: m for m in (*FRAMEWORK, *REAL_ONLY)}
    by = {m.name: ["framework"] for m in FRAMEWORK} | {m.name: [REAL_TWIN] for m in REAL_ONLY}
    for who, metric in declarations:
        known = metrics.get(metric.name)
        if known is None:
            metrics[metric.name], by[metric.name] = metric, [who]
        elif by[metric.name] in (["framework"], [REAL_TWIN]):
            raise MetricError(f"{who} declares {metric.name!r}, a framework metric: report it without declaring it")
        elif (known.unit, known.type) != (metric.unit, metric.type):
            raise MetricError(f"{who} declares {metric.name!r} as {metric.unit} ({metric.type.__name__}), but "
                              f"{by[metric.name][0]} as {known.unit} ({known.type.__name__})")  # fmt: skip
        elif who not in by[metric.name]:
            by[metric.name].append(who)
    return Catalogue(metrics, by)


def summary_metrics(secondaries: Iterable[type], others: Iterable[object] = ()) -> dict[str, Metric]:
    """Every metric column of the summary of a run whose secondary MMUs are of the classes ``secondaries``
    and whose other components (policies, workloads) and hook-only plugin modules are ``others``: the
    framework's metrics, each secondary kind's ``<kind>.<metric>`` (the framework's per-kind metrics and
    the ones its class declares), and what the others declare. A run writes each of them, 0 when nothing
    happened (``mmnsim.output.summary_frame``), so every run of one configuration has the same columns."""
    out = {m.name: m for m in FRAMEWORK if m.name not in TIMESERIES_ONLY + PER_KIND_ONLY}
    per_kind = [m for m in FRAMEWORK if m.per_secondary]
    for cls in secondaries:
        declared = tuple(getattr(cls, "declared_metrics", ()) or ())
        out.update({m.name: m for m in declared})
        out.update({f"{cls.name}.{m.name}": m for m in (*per_kind, *declared)})
    for plugin in others:
        out.update({m.name: m for m in getattr(plugin, "declared_metrics", ()) or ()})
    return out


def installed_catalogue(extra: Iterable[object] = (), builtin_only: bool = False) -> Catalogue:
    """The catalogue of everything this installation finds: built-in and installed plugins (and ``extra``
    plugin modules), every component class they register; ``builtin_only``: the built-in ones alone."""
    from .discovery import Registry, plugin_manager

    pm = plugin_manager()
    for plugin in extra:
        pm.register(plugin)
    registry = Registry.from_plugins(pm)
    modules = [p for p in pm.get_plugins() if not builtin_only or pm.get_name(p).startswith("builtin:")]
    classes = [cls for kind in registry.classes.values() for cls in kind.values()
               if not builtin_only or registry.source[cls].startswith("builtin:")]  # fmt: skip
    return catalogue(plugin_declarations([*modules, *classes]))


def markdown(cat: Catalogue) -> str:
    """docs/metrics.md."""
    lines = [
        "# Metrics",
        "",
        "Every column of a run's `summary.parquet` (besides its config and provenance) and of its",
        "`timeseries.parquet`, as declared in `framework/metrics.py` and by the built-in plugins. Generated by",
        "`mmnsim-report --metrics-doc > docs/metrics.md`; `mmnsim-report --explain NAME` prints one entry (for",
        "installed plugins too). Type `int` is a count (an integer column). Metrics marked *per kind* are also",
        "reported per secondary MMU kind, as `<kind>.<metric>` (`kvm.tlb_flushes`), as is every metric a",
        "secondary MMU plugin declares. A run's summary has every metric its configuration declares (0 when",
        "nothing happened); when a sweep ends, its summaries share one schema, a metric of another configuration",
        "(another secondary MMU kind, a policy the run does not have) being null. How the times are built:",
        "[time.md](time.md): `sim_time_ns_per_access` is divided among a client's CPUs, `effective_access_ns`",
        "is per access of one CPU. Where the real twin (`backend=real`) reads each metric, or why it cannot:",
        "[real.md](real.md) and `--explain`.",
        "",
    ]
    sections = [("Framework: event counters", [m.name for m in COUNTERS]),
                ("Framework: sums, gauges, time and derived figures", [m.name for m in OTHERS])]  # fmt: skip
    plugins: dict[str, list[str]] = {}
    for name, who in cat.declared_by.items():
        if who != ["framework"]:
            plugins.setdefault(", ".join(who), []).append(name)
    sections += [(f"Real twin only ({REAL_TWIN.split('(')[1]}" if who == REAL_TWIN else f"Plugin: {who}", names)
                 for who, names in sorted(plugins.items())]  # fmt: skip
    for title, names in sections:
        lines += [f"## {title}", "", "| metric | unit | type | meaning | kernel counter |", "|---|---|---|---|---|"]
        for name in names:
            m = cat.metrics[name]
            flag = " (*per kind*)" if m.per_secondary else ""
            lines.append(f"| `{m.name}`{flag} | {m.unit} | {m.type.__name__} | {m.meaning} | {m.kernel} |")
        lines.append("")
    return "\n".join(lines)


# --- the real twin (backend=real, docs/real.md) ----------------------------------------------------------
# Where the real twin reads each metric it reports, under the model's name and meaning: (source, what differs).
# mmnsim.real.counters computes them (this module never imports the twin); ``mmnsim-report --explain NAME``
# prints the source. A metric the twin cannot observe is null in its results, never 0: REAL_UNOBSERVED
# says why. REAL_ONLY declares what only the twin reports.
REAL_TWIN = "the real twin (backend=real)"
REAL_SOURCES: dict[str, tuple[str, str]] = {
    "accesses": (
        "the tenants' replay (the guest's vCPUs, the processes)",
        "accesses in the chunks the tenants completed, the boot pass included as in the model",
    ),
    "accesses_attempted": ("the tenants' replay", "accesses the tenants were given"),
    "accesses_failed": ("the tenants' replay", "given minus completed: a tenant killed (OOM) mid-batch"),
    "writes": ("the tenants' replay", "writes in the access lists the tenants completed"),
    "minor_faults": (
        "memory.stat pgfault - pgmajfault (the run's cgroup)",
        "every fault of the tenants' tasks, KVM's get_user_pages faults for the guest included "
        "(mm_account_fault), but also the harness code's own in the tenant processes and faults that "
        "failed",
    ),
    "major_faults": (
        "memory.stat pgmajfault (the run's cgroup)",
        "faults that read from swap (do_swap_page) or, rarely, read a file page from disk (filemap_fault)",
    ),
    "swap_outs": (
        "/proc/vmstat pswpout",
        "machine-wide: exact while nothing else on the machine swaps",
    ),
    "swap_ins": (
        "/proc/vmstat pswpin",
        "machine-wide; counts swap readahead's pages too (swapin_readahead), some never used",
    ),
    "secondary_faults": (
        "KVM vCPU statistic pf_fixed, summed over vCPUs",
        "shadow-MMU faults that installed an spte, from the guest's creation on (its buffer's warm-up "
        "subtracted); one fault maps up to 8 (prefetch: kvmmmu:kvm_mmu_set_spte counts entries); pf_taken also "
        "counts faults that retried or were emulated",
    ),
    "invalidations": (
        "trace kvm:kvm_unmap_hva_range: calls meeting the memslots",
        "one per invalidate_range_start KVM received for guest RAM, by the run's threads or a kernel "
        "thread (not another process's VM, not DAMON); a kernel thread's call for another VM at the "
        "same host addresses would count too (the event names no VM); calls for the harness's own "
        "memory in the mm are left out, which the model does not have",
    ),
    "young_pages_aged": (
        "trace kvm:kvm_age_hva: pages meeting the memslots, by reclaim",
        "pages of clear_flush_young calls from reclaim (the run's threads in memcg direct reclaim, "
        "and kswapd); DAMON's aging is apart (damon_young_calls)",
    ),
    "remote_tlb_flush": (
        "KVM VM statistic remote_tlb_flush",
        "kvm_flush_remote_tlbs calls that sent an IPI to a vCPU in guest mode (kvm_make_all_cpus_request "
        "returned true), from the guest's creation on",
    ),
    "vcpu_tlb_flushes": (
        "KVM vCPU statistic tlb_flush, summed over the vCPUs",
        "flushes the vCPUs performed on entry (kvm_vcpu_flush_tlb_all), a pending request's or their own",
    ),
    "tlb_flushes": (
        "KVM VM statistic remote_tlb_flush_requests",
        "every kvm_flush_remote_tlbs call from the guest's creation on, the notifier's and the shadow MMU's own "
        "(zapped shadow pages, write protection); remote_tlb_flush counts those that sent requests",
    ),
    "pgscan": (
        "trace vmscan:mm_vmscan_lru_shrink_inactive: nr_scanned by reclaim",
        "pages isolated from the inactive lists, as the kernel's pgscan; v1 memory.stat has none and "
        "/proc/vmstat leaves out reclaim under a cgroup limit",
    ),
    "direct_reclaims": (
        "trace vmscan:mm_vmscan_memcg_reclaim_begin + vmscan:mm_vmscan_direct_reclaim_begin by the run's threads",
        "calls of try_to_free_mem_cgroup_pages (or global direct reclaim): try_charge_memcg calls it "
        "up to MAX_RECLAIM_RETRIES + 1 times for one charge, the model counts allocations",
    ),
    "kswapd_wakeups": (
        "/proc/vmstat pageoutrun",
        "machine-wide; a cgroup limit wakes no kswapd",
    ),
    "thp_fault_alloc": (
        "/proc/vmstat thp_fault_alloc",
        "machine-wide",
    ),
    "thp_fault_fallback": (
        "/proc/vmstat thp_fault_fallback",
        "machine-wide",
    ),
    "thp_split": (
        "/proc/vmstat thp_split_page",
        "machine-wide; thp_split_pmd counts PMD splits that keep the page whole",
    ),
    "thp_swpout": ("/proc/vmstat thp_swpout", "machine-wide: THPs written to swap whole"),
    "thp_swpout_fallback": (
        "/proc/vmstat thp_swpout_fallback",
        "machine-wide: THPs split because no swap cluster was free",
    ),
    "thp_collapse_alloc": (
        "/proc/vmstat thp_collapse_alloc",
        "machine-wide",
    ),
    "compact_stall": (
        "/proc/vmstat compact_stall",
        "machine-wide; direct compactions of any order",
    ),
    "pages_migrated": (
        "/proc/vmstat pgmigrate_success",
        "machine-wide",
    ),
    "migrations_refused": (
        "/proc/vmstat pgmigrate_fail",
        "machine-wide",
    ),
    "pins_acquired": (
        "/proc/vmstat nr_foll_pin_acquired",
        "machine-wide; KVM takes none; the pin mode's io_uring stand-in does (pin_user_pages), its mlock fallback not",
    ),
    "pins_released": (
        "/proc/vmstat nr_foll_pin_released",
        "machine-wide",
    ),
    "cow_ksm": (
        "/proc/vmstat cow_ksm",
        "machine-wide; present with CONFIG_KSM",
    ),
    "numa_hint_faults": (
        "/proc/vmstat numa_hint_faults",
        "machine-wide; present with NUMA balancing",
    ),
    "numa_hint_faults_local": (
        "/proc/vmstat numa_hint_faults_local",
        "machine-wide",
    ),
    "oom_kills": (
        "memory.oom_control oom_kill (the run's cgroup)",
        "the group's OOM kills only",
    ),
    "swap_used": (
        "memory.stat swap / page size (the run's cgroup)",
        "swap space charged to the tenants when the replay ended",
    ),
    "free_frames": (
        "(memory.limit_in_bytes - memory.usage_in_bytes) / page size",
        "the limited host's room when the replay ended; usage counts page cache and kernel memory too",
    ),
    "resident_pages": (
        "memory.stat rss / page size (the run's cgroup)",
        "anonymous memory and swap cache of the tenants, THPs included",
    ),
    "pinned_pages": (
        "/proc/PID/smaps Locked of the tenants' RAM / page size + /proc/vmstat nr_foll_pin_acquired - "
        "nr_foll_pin_released",
        "when the replay ended: the pin mode's mlocked pages (its fallback) or io_uring's long-term pins "
        "(machine-wide: exact while nothing else pins); not the harness's own locked memory "
        "(harness_locked_bytes)",
    ),
    "huge_mapped_fraction": (
        "KVM VM statistics pages_2m / (pages_4k + pages_2m + pages_1g)",
        "guest RAM's sptes by size when the replay ended (the control and buffer slots' subtracted)",
    ),
    "secondary_mapped_pages": (
        "KVM VM statistics pages_4k + pages_2m + pages_1g",
        "guest RAM's sptes when the replay ended: the VM's count less the control and buffer slots' (read once "
        "the guest was created)",
    ),
    "thp_coverage": (
        "/proc/PID/smaps AnonHugePages over the memslots / their size",
        "when the replay ended",
    ),
    "sim_time_ns": (
        "the replay's wall time: each batch from its first vCPU's start to its last one's exit, summed",
        "this machine's time (itself a guest under PVM: every exit costly); the tenants' batches of a tick run "
        "one after the other (the model's `engine.schedule=serial`; its default takes the slowest client's)",
    ),
    "sim_time_ns_per_access": ("the replay's wall time / accesses", "as sim_time_ns"),
    "wall_seconds": ("the run's wall time", "the whole run: setup, boot pass, replay and teardown"),
    "eager_releases": (
        "the twin's own mprotect(PROT_NONE) + mprotect(PROT_READ|PROT_WRITE) round trips of guest RAM (or "
        "MADV_DONTNEED with real.eager_release=dontneed)",
        "each raises one PROTECTION_VMA invalidation per page-table range that KVM zaps (docs/real.md)",
    ),
}
REAL_UNOBSERVED: dict[str, str] = {
    "secondary_prefetched": "KVM keeps no count of prefetched sptes; the twin's spte_installs "
    "(kvmmmu:kvm_mmu_set_spte) counts them with the faults' own, from the run's threads, where secondary_faults "
    "(pf_fixed) counts from the guest's creation, so their difference is only an estimate",
    "compile_seconds": "the twin compiles nothing: numba's compile time is the simulator's own",
    "fault_retries": "KVM keeps no statistic of RET_PF_RETRY (kvm_mmu_page_fault retries silently)",
    "alloc_failures": "a failed charge ends in the group's OOM killer or SIGBUS: no counter",
    "oom_events": "cgroup v1 has no memory.events; out_of_memory() has no tracepoint (oom_kills is observed)",
    "access_errors": "the guest's replay has no failing access: a fault it cannot take stops the run",
    "isolation_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "coherence_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "stale_reads": "needs the ground truth of which frame holds which page, which only the model has",
    "stale_writes": "needs the ground truth of which frame holds which page, which only the model has",
    "foreign_writes": "needs the ground truth of which frame holds which page, which only the model has",
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
    "invalidations_unmap": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "invalidations_clear": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "invalidations_protection_vma": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "invalidations_protection_page": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "invalidations_soft_dirty": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "invalidations_release": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "invalidations_migrate": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "invalidations_exclusive": "kvm:kvm_unmap_hva_range carries no mmu_notifier_event; no tracepoint does",
    "oom_reaper_refusals": "no counter (the reaper logs and retries)",
    "oom_reaped_pages": "the oom:finish_task_reaping event reports the victim's RSS, not pages torn down per range",
    "invalidate_page_calls": "the invalidate_page op was removed in 4.13; kernel=2008 only",
    "race_windows": "a model parameter (engine.race_window), not an event",
    "oom_ticks": "the model's own bookkeeping: nothing of the kernel's corresponds",
    "pages_zapped": "the shadow MMU has no per-spte zap tracepoint; pages_invalidated counts the pages KVM was told",
    "tlb_flush_ipis": "KVM counts no kicks (vcpu_tlb_flushes counts flushes the vCPUs took)",
    "flush_cost_ns": "a model cost",
    "translation_ns": "a model cost (page walks)",
    "translation_ns_per_access": "a model cost (page walks)",
    "forced_pin": "kernel=2008 only",
    "pinned_pages_peak": "sampled per tick in the model; the real run samples once",
    "integrity_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "pin_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "conservation_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "accessed_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "permission_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "invariant_violations": "needs the ground truth of which frame holds which page, which only the model has",
    "tick": "the model's own bookkeeping: nothing of the kernel's corresponds",
    "ticks": "the model's own bookkeeping: nothing of the kernel's corresponds",
    "oom_victims": "the OOM killer names its victims in the kernel log; oom_kills counts them",
    "host_cpu_ns": "a model figure; the host's CPU time is not split by purpose",
    "guest_stall_ns": "a model figure",
    "stall_fraction": "a model figure",
    "change_pte_applied": "change_pte was removed in 6.9; this kernel has no such callback",
}


def _real(name: str, unit: str, meaning: str, source: str, type_: type = int) -> Metric:
    return Metric(name, unit, type_, meaning, kernel=source)


REAL_ONLY = (
    _real(
        "pages_invalidated",
        "pages",
        "guest pages in the invalidations KVM received (notifier ranges met with the memslots, by the"
        " run's threads and kernel threads)",
        "trace kvm:kvm_unmap_hva_range",
    ),
    _real("age_calls", "calls", "clear(_flush)_young calls on guest memory by reclaim", "trace kvm:kvm_age_hva"),
    _real(
        "test_age_calls",
        "calls",
        "test_young calls on guest memory, DAMON's left out (khugepaged's)",
        "trace kvm:kvm_test_age_hva",
    ),
    _real(
        "damon_young_calls",
        "calls",
        "DAMON's kdamond's young-op calls on guest memory (age and test-age)",
        "trace kvm:kvm_age_hva, kvm:kvm_test_age_hva by kdamond",
    ),
    _real(
        "pages_reclaimed",
        "pages",
        "pages reclaim freed from the inactive lists (the kernel's pgsteal)",
        "trace vmscan:mm_vmscan_lru_shrink_inactive nr_reclaimed",
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
    _real("memcg_failcnt", "charges", "charges that hit the cgroup limit", "memory.failcnt"),
    _real("memcg_max_usage_bytes", "bytes", "the cgroup's peak charge", "memory.max_usage_in_bytes"),
    _real(
        "chunk_exits",
        "exits",
        "the guest's exits to the host during the replay: one per vCPU per chunk of real.chunk_accesses, each "
        "one emulated `out` (emulated_instructions equals it when the replay runs natively)",
        "the twin's own count (mmnsim.real.guest Guest.chunk_exits)",
    ),
    _real(
        "wall_ns_per_access",
        "ns/access",
        "the whole run's wall time per completed access: setup, boot pass, replay and teardown",
        "the run's wall time",
        float,
    ),
    _real(
        "harness_rss_bytes",
        "bytes",
        "the tenant processes' own memory (interpreter, numpy, the twin's modules) before they joined the "
        "memory cgroup: charged outside the limit",
        "/proc/PID/status VmRSS of each tenant process before it joined",
    ),
    _real(
        "harness_locked_bytes",
        "bytes",
        "the tenant processes' own memory charged to the memory cgroup after they joined (the interpreter's "
        "heap, the vCPU threads' stacks): locked, so that reclaim takes only the tenants' memory, as in the "
        "model, but inside the limit, which the model's host does not lose",
        "memory.stat unevictable less the tenants' RAM's smaps Locked, when the replay ended",
    ),
    _real(
        "trace_lost_events",
        "events",
        "trace events the ring buffer lost (overrun, dropped): counts from the trace are low by at most this much",
        "per_cpu/cpuN/stats",
    ),
)


def real_source(name: str) -> str:
    """The ``--explain`` line saying where the real twin reads metric ``name`` (a ``<kind>.`` column by its
    base name), or why it cannot; empty for a metric the twin does not know."""
    base = name if name in REAL_SOURCES or name in REAL_UNOBSERVED else name.partition(".")[2]
    if base in REAL_SOURCES:
        source, caveat = REAL_SOURCES[base]
        return f"\n  real twin (backend=real): {source}; {caveat}"
    if base in REAL_UNOBSERVED:
        return f"\n  real twin (backend=real): not observed (null in its results): {REAL_UNOBSERVED[base]}"
    return ""
