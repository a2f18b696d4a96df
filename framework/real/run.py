"""One real run (``mmnsim backend=real``): the scenario's tenants on this machine's kernel, fed the
simulation's own access lists tick by tick, and the kernel's counts as mmnsim metrics.

    result = run(cfg, run_id="job0", progress=bar)      # cfg: the composed Hydra config, backend=real
    write_results(outdir, cfg, result.metrics, result.rows, extra=result.provenance)

The steps, each in the module that owns it:

1. **Settings** (``mmnsim.settings.load_settings``, which calls ``mmnsim.real.config.check``): what the
   machine cannot run is refused in one line before anything changes.
2. **Preflight** (``preflight.check``): root, /dev/kvm, tracefs, the memory cgroup v1 controller, free memory
   for what the tenants may hold, disk for the swap file.
3. **Resources** (``cleanup.RunResources``, named after the run, removed on every exit path, a killed run's
   by the next run, within the time limit ``real.time_limit_s``): the swap file (``host.swap_mib``), the
   memory cgroup (limit ``host.memory_mib``; memory+swap limit the two together), then the tenants: the
   guest (``Guest``: KVM, ``guest.vcpus`` vCPUs, guest pages of 2 MiB when ``guest.thp``) and the plain
   processes (``Process``), each a child that joins the cgroup before it allocates any of its memory
   (``before_ram``) and gets its ``oom_score_adj``; then the tracing instance, so that only what happens
   to guest RAM from here on is counted.
4. **The host as configured**: ``host.thp`` becomes MADV_HUGEPAGE or MADV_NOHUGEPAGE of each tenant's memory
   within the machine's THP mode (``thp_advice``); ``secondary.mode=pin`` pins guest RAM with io_uring's
   long-term pin (``real.pin_method``) before the boot pass.
5. **The replay**: the streams of ``mmnsim.workload.client_streams`` (the simulator's own function: the same
   seed gives the same accesses, the boot pass first), ``engine.accesses_per_tick`` per client per tick, the
   tenants one after the other within a tick as the model runs its clients. ``policies.eager_release`` drops
   KVM's translations every ``every_ticks`` ticks before the tenants run, as the model's host_tick does
   (``release``). A tenant the cgroup's OOM killer kills stops, as a tenant the model's OOM killer kills; any
   other death of a tenant fails the run. One time-series row per tick.
6. **Counts** (``counters``): the cgroup's statistics, /proc/vmstat's growth and KVM's statistics when the
   replay ends (KVM's less what the guest's creation took: they then count guest RAM alone), the trace's
   tallies, the replay's wall time.
"""

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from ..config import RunError
from ..discovery import Registry, plugin_manager
from ..host import THP
from ..settings import Settings, TenantSpec, load_settings
from ..workload import WorkloadStream, client_streams
from . import cleanup, counters, machineinfo, preflight
from .errors import HostError
from .guest import Guest, GuestDied, GuestError, Process
from .hostmem import PAGE_SIZE

log = logging.getLogger("mmnsim")
MIB = 1 << 20


@dataclass
class Tenant:
    """One tenant of the scenario on the machine: its child process and its access stream."""

    spec: TenantSpec
    handle: Guest  # a KVM guest, or a plain process (Process)
    stream: WorkloadStream
    batch: int  # accesses per tick
    kvm: bool  # the guest (secondary=kvm), else a plain process
    attempted: int = 0  # accesses it was given
    killed: bool = False  # by the cgroup's OOM killer
    base_stats: dict[str, int] = field(default_factory=dict)  # KVM's statistics once the guest was created
    last_stats: dict[str, int] = field(default_factory=dict)  # KVM's statistics at the last tick it lived

    @property
    def done(self) -> bool:
        return self.killed or self.stream.done

    def kvm_stats(self) -> dict[str, int]:
        """KVM's statistics of guest RAM: what they count now less what the guest's creation took (the
        control and buffer memslots' sptes and faults); the last reading if the guest is dead."""
        if self.kvm and not self.killed:
            now = self.handle.stats()
            self.last_stats = {k: v - self.base_stats.get(k, 0) for k, v in now.items()}
        return self.last_stats


@dataclass
class Result:
    metrics: dict[str, int | float]
    rows: list[dict[str, float]]  # the time series, one row per tick
    provenance: dict[str, str | bool]  # the machine and the run (summary columns machine.*, twin.*)


def thp_advice(host_thp: THP, madvise_hugepage: bool) -> str:
    """The madvise that gives a tenant's memory the model's THP behaviour under ``host.thp``, whatever the
    machine's mode (config.check refused a THP the machine's ``never`` mode cannot give): ``hugepage`` where
    the model faults THPs in (``always``, or ``madvise`` in an MADV_HUGEPAGE region: guest RAM as QEMU makes
    it), else ``nohugepage``."""
    wanted = host_thp is THP.always or (host_thp is THP.madvise and madvise_hugepage)
    return "hugepage" if wanted else "nohugepage"


def run(cfg: DictConfig, run_id: str = "run", progress: Callable[[float], None] | None = None) -> Result:
    """Run the scenario of ``cfg`` (backend=real) on this machine. Raises ConfigError (HostError) for what the
    machine lacks, RunError when the run cannot finish (a tenant crashed, the time limit), KeyboardInterrupt
    on Ctrl-C, SIGTERM or SIGHUP; everything the run created is removed in every case."""
    started = time.perf_counter()
    settings = load_settings(cfg, Registry.from_plugins(plugin_manager()))
    real, host = settings.real, settings.host
    memory_bytes = sum(t.pages for t in settings.tenants) * PAGE_SIZE
    swap_bytes = host.swap_mib * MIB
    preflight.check(memory_bytes, host.memory_mib * MIB, swap_bytes, Path(real.swap_directory),
                    real.memory_margin_mib * MIB)  # fmt: skip
    streams, _ = client_streams(settings.seed, settings.tenants)
    try:
        with cleanup.RunResources(run_id, time_limit_s=real.time_limit_s,
                                  swap_dirs=(Path(real.swap_directory),)) as resources:  # fmt: skip
            for line in resources.swept:
                log.info("leftover of a killed run: %s", line)
            obs, tenants, rows, provenance = _run(settings, streams, resources, progress)
    except cleanup.RunTimeout as exc:
        raise RunError(f"{exc}; everything the run created was removed (real.time_limit_s)") from None
    except GuestError as exc:
        raise RunError(f"{exc}; everything the run created was removed") from None
    obs.wall_seconds = time.perf_counter() - started  # the whole run: its removals included
    return Result(_metrics(obs, tenants), rows, provenance)


Outcome = tuple[counters.Observation, list["Tenant"], list[dict], dict]  # what _run gives run()


def _run(settings: Settings, streams: list[list[WorkloadStream]], resources: cleanup.RunResources,
         progress: Callable[[float], None] | None) -> Outcome:  # fmt: skip
    """The run inside its resources: the observation, the tenants (closed), the time series, the provenance."""
    real, host = settings.real, settings.host
    if host.swap_mib:
        resources.swapfile(host.swap_mib * MIB, Path(real.swap_directory), real.swap_priority)
    group = resources.cgroup(host.memory_mib * MIB, host.swap_mib * MIB)

    def place(pid: int, oom_score_adj: int) -> None:
        """A tenant's child, before any of its memory exists: registered (killed if the run ends), in the group."""
        resources.child(pid)
        group.add_process(pid)
        try:
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(oom_score_adj))
        except PermissionError:  # fs/proc/base.c __set_oom_adj: below oom_score_adj_min needs CAP_SYS_RESOURCE
            raise HostError(
                f"cannot set a tenant's oom_score_adj to {oom_score_adj}: a value below the minimum this process "
                "inherited (0 unless a privileged ancestor lowered it) needs CAP_SYS_RESOURCE, which it lacks; use "
                "a value at or above it, or run with the capability"
            ) from None

    tenants: list[Tenant] = []
    try:
        for spec, (stream,) in zip(settings.tenants, streams, strict=True):
            tenants.append(_start(spec, stream, settings, place))
        reader = resources.tracing(buffer_kb=real.trace_buffer_kb)
        for tenant in tenants:
            reader.add_run_process(tenant.handle.pid)
            if tenant.kvm:
                reader.watch(*tenant.handle.ram_range)
        reader.start()
        vmstat_before = counters.read_vmstat()
        pin = _prepare(tenants, settings)
        rows, replay_s, releases = _replay(tenants, settings, group, vmstat_before, progress)
        guest = next((t for t in tenants if t.kvm), None)
        obs = counters.Observation(
            accesses=sum(t.handle.accesses_done for t in tenants),
            accesses_attempted=sum(t.attempted for t in tenants),
            writes=sum(t.handle.writes_done for t in tenants),
            replay_ns=replay_s * 1e9,
            vmstat=counters.vmstat_delta(vmstat_before, counters.read_vmstat()),
            memcg=group.sample(),
            kvm=_guest_stats(guest, group, tenants, len(rows)),
            guest_bytes=guest.spec.pages * PAGE_SIZE if guest is not None else None,
            guest_huge_bytes=_huge_bytes(guest),
            eager_releases=releases,
            harness_rss_bytes=sum(t.handle.harness_rss_bytes for t in tenants),
            ram_locked_bytes=sum(
                counters.smaps_bytes(t.handle.pid, *t.handle.ram_range, "Locked") for t in tenants if not t.killed
            ),
            chunk_exits=sum(t.handle.chunk_exits for t in tenants if t.kvm) if guest is not None else None,
        )
        obs.trace = reader.stop()
    finally:
        for tenant in tenants:
            tenant.handle.close()
    return obs, tenants, rows, {**machineinfo.provenance(), **_run_provenance(resources, pin, settings)}


def _start(spec: TenantSpec, stream: WorkloadStream, settings: Settings, place) -> Tenant:
    """A tenant's child process, in the cgroup, its memory allocated (not touched)."""
    client = spec.clients[0]  # config.check allows one client per tenant
    real = settings.real
    options = dict(chunk_accesses=real.chunk_accesses, timeout=real.request_timeout_s,
                   before_ram=lambda pid: place(pid, spec.oom_score_adj))  # fmt: skip
    kvm = client.secondary is not None
    memory_mib = spec.pages * PAGE_SIZE // MIB
    if kvm:
        handle = Guest(memory_mib, vcpus=int(client.vcpu_nodes.size), guest_thp=spec.guest_thp, **options)
    else:
        handle = Process(memory_mib, **options)
    batch = client.accesses_per_tick or settings.engine.accesses_per_tick
    tenant = Tenant(spec, handle, stream, batch, kvm)
    if kvm:
        tenant.base_stats = handle.stats()
    return tenant


def _prepare(tenants: list[Tenant], settings: Settings) -> str:
    """host.thp as each tenant's madvise; secondary.mode=pin as a long-term pin of guest RAM. Returns what
    pinned (method and note), or an empty string."""
    pinned = ""
    for tenant in tenants:
        tenant.handle.madvise(thp_advice(settings.host.thp, tenant.spec.madvise_hugepage))
        secondary = tenant.spec.clients[0].secondary
        if secondary is not None and getattr(secondary[1].mode, "value", secondary[1].mode) == "pin":
            method, note = tenant.handle.pin(settings.real.pin_method)
            pinned = f"{method}{f' ({note})' if note else ''}"
            log.info("guest RAM pinned with %s", pinned)
    return pinned


def _replay(tenants: list[Tenant], settings: Settings, group, vmstat_before: dict[str, int],
            progress: Callable[[float], None] | None) -> tuple[list[dict], float, int | None]:  # fmt: skip
    """Tick by tick until every stream is done (or its tenant killed): the eager release first, then each
    tenant's batch. Returns the time-series rows, the replay's wall time and the releases made (None: no
    eager_release policy)."""
    every = _release_every(settings)
    releases = None if every is None else 0
    rows: list[dict] = []
    replay_s = 0.0
    tick = 0
    known = [t.stream for t in tenants if t.stream.total]
    total = sum(s.total for s in known)
    while not all(t.done for t in tenants):
        if every and tick % every == 0:
            for tenant in tenants:
                if tenant.kvm and not tenant.killed:
                    with _an_oom_kill_is_an_outcome(tenant, group, tenants, tick):
                        releases += release(tenant.handle, settings.real.eager_release)
        for tenant in tenants:
            boot = min(tenant.batch, tenant.stream.boot_left)  # of this batch, the boot pass's accesses
            batch = None if tenant.killed else tenant.stream.next_batch(tenant.batch, tick)
            if batch is None:
                continue
            pages, writes = batch
            region_start = tenant.spec.clients[0].region[0]
            pages = pages + region_start if region_start else pages
            tenant.attempted += pages.size
            with _an_oom_kill_is_an_outcome(tenant, group, tenants, tick):
                # The boot pass first, whole, as the model runs it: the vCPUs run their shares of a batch at
                # once, and a workload's read of a page another vCPU has yet to boot would map the zero page
                # (and its boot write then copy it, an invalidation the model's order never makes).
                for part in (slice(0, boot), slice(boot, None)):
                    if pages[part].size:
                        replay_s += tenant.handle.run(pages[part], writes[part])
        rows.append(_row(tick, replay_s, tenants, group, vmstat_before))
        if progress is not None and total:
            progress(sum(s.issued for s in known) / total)
        tick += 1
    return rows, replay_s, releases


def _release_every(settings: Settings) -> int | None:
    policy = settings.policies.get("eager_release")
    return None if policy is None else policy[1].every_ticks


def release(guest: Guest, how: str) -> int:
    """The model's eager release (plugins/eager_release.py: a CLEAR invalidation of the whole mm, delivered to
    KVM alone, which zaps every spte; the pages stay). ``mprotect``: PROT_NONE then read-write again over
    guest RAM: change_protection raises MMU_NOTIFY_PROTECTION_VMA invalidations (one per page-table range
    that holds entries, mm/mprotect.c change_pmd_range), KVM zaps its sptes (kvm_mmu_notifier_invalidate_
    range_start), and the pages stay where they are; the guest refaults through KVM alone. ``dontneed``:
    MADV_DONTNEED of guest RAM: one CLEAR invalidation, but the host pages are freed too, so the guest's next
    touch is a host fault and a zero-filled page (its data is gone). Returns 1 (a release was made)."""
    if how == "mprotect":
        guest.mprotect("none")
        guest.mprotect("rw")
    else:
        guest.madvise("dontneed")
    return 1


@contextlib.contextmanager
def _an_oom_kill_is_an_outcome(tenant: Tenant, group, tenants: list[Tenant], tick: int):
    """A request to ``tenant`` during which its process is found dead: if the cgroup's OOM killer killed it,
    the tenant is marked killed and the run goes on (an outcome, the model's ``oom_kills``), else the death is
    raised. The killer takes whichever tenant it picks when any of them charges a page, so a tenant can die
    between its own batches, and the next request to it, whatever it is, finds it."""
    try:
        yield
    except GuestDied as exc:
        if not _oom_killed(group, tenants):
            raise
        tenant.killed = True
        log.warning("%s was killed by the memory cgroup's OOM killer at tick %d: %s", tenant.spec.name, tick, exc)


def _guest_stats(guest: Tenant | None, group, tenants: list[Tenant], tick: int) -> dict[str, int] | None:
    """The guest's KVM statistics (``Tenant.kvm_stats``), its last reading if it is found OOM-killed."""
    if guest is None:
        return None
    with _an_oom_kill_is_an_outcome(guest, group, tenants, tick):
        return guest.kvm_stats()
    return guest.last_stats


def _oom_killed(group, tenants: list[Tenant]) -> bool:
    """Whether the group's OOM killer has killed more tenants than the run knows of."""
    kills = group.sample().oom_kills
    return kills is not None and kills > sum(t.killed for t in tenants)


def _row(tick: int, replay_s: float, tenants: list[Tenant], group, vmstat_before: dict[str, int]) -> dict:
    """One time-series row: the counters that cost no trace read, as the model's rows name them."""
    guest = next((t for t in tenants if t.kvm), None)
    obs = counters.Observation(
        accesses=sum(t.handle.accesses_done for t in tenants),
        writes=sum(t.handle.writes_done for t in tenants),
        replay_ns=replay_s * 1e9,
        vmstat=counters.vmstat_delta(vmstat_before, counters.read_vmstat()),
        memcg=group.sample(),
        kvm=_guest_stats(guest, group, tenants, tick),
    )
    found = counters.metrics(obs)
    keep = ("accesses", "writes", "minor_faults", "major_faults", "swap_outs", "swap_ins", "secondary_faults",
            "tlb_flushes", "swap_used", "free_frames", "resident_pages", "secondary_mapped_pages",
            "thp_fault_alloc", "thp_split", "oom_kills")  # fmt: skip
    return {"tick": tick, "sim_time_ns": replay_s * 1e9, **{k: found[k] for k in keep if k in found}}


def _huge_bytes(guest: Tenant | None) -> int | None:
    if guest is None or guest.killed:
        return None
    return counters.anon_huge_bytes(guest.handle.pid, *guest.handle.ram_range)


def _metrics(obs: counters.Observation, tenants: list[Tenant]) -> dict[str, int | float]:
    """The summary's metrics: ``counters.metrics``, with the per-kind columns (``kvm.*``) of the guest alone."""
    found = counters.metrics(obs)
    guest = next((t for t in tenants if t.kvm), None)
    if guest is None:
        return found
    out = counters.with_kind_columns(found)
    if len(tenants) > 1:  # the sums over every tenant are not the guest's: its own counts, or nothing
        for name in ("minor_faults", "major_faults"):
            out.pop(f"kvm.{name}", None)
        out["kvm.accesses"] = guest.handle.accesses_done
        out["kvm.accesses_attempted"] = guest.attempted
        out["kvm.accesses_failed"] = guest.attempted - guest.handle.accesses_done
        out["kvm.writes"] = guest.handle.writes_done
    return out


def _run_provenance(resources: cleanup.RunResources, pin: str, settings: Settings) -> dict[str, str]:
    out = {"twin.run_name": resources.name}
    if pin:
        out["twin.pin"] = pin
    if "eager_release" in settings.policies:
        out["twin.eager_release"] = settings.real.eager_release
    return out


def summary_text(m: dict) -> str:
    """A few lines a person reads after a real run (``mmnsim.output.summary_text``'s counterpart: the twin's
    metrics, the absent ones shown as such)."""

    def n(name: str) -> str:
        value = m.get(name)
        return "-" if value is None else f"{value:,.0f}" if isinstance(value, int | float) else str(value)

    per_access = m.get("sim_time_ns_per_access")
    lines = [
        f"real twin: accesses {n('accesses')} completed, {n('accesses_failed')} failed; replay "
        f"{m.get('sim_time_ns', 0) / 1e9:.3f} s ({per_access or math.nan:,.0f} ns per access), wall "
        f"{m.get('wall_seconds', 0):.2f} s",
        f"faults: KVM {n('secondary_faults')}, minor {n('minor_faults')}, major {n('major_faults')}; "
        f"swap out {n('swap_outs')}, in {n('swap_ins')}; OOM kills {n('oom_kills')}",
        f"notifier: invalidations {n('invalidations')} ({n('pages_invalidated')} pages), young pages aged "
        f"{n('young_pages_aged')}, TLB flush requests {n('tlb_flushes')}; reclaim scanned {n('pgscan')}, "
        f"reclaimed {n('pages_reclaimed')}",
        f"emulated instructions {n('emulated_instructions')} (chunk exits {n('chunk_exits')}); trace events lost "
        f"{n('trace_lost_events')}",
    ]
    return "\n".join(lines)


def run_id_of(job_name: str, job_num: int | None) -> str:
    """The run's part of its resource names: the Hydra job (and its number in a sweep), so that a sweep's
    jobs are told apart; the pid (cleanup.run_name) makes it unique on the machine."""
    return f"{job_name}{'' if job_num is None else job_num}"


def exit_status(exc: BaseException) -> int:
    """The shell's status for a run stopped by a signal: 128 + its number (Ctrl-C's SIGINT: 130)."""
    name = str(exc).rpartition("stopped by ")[2].split()[0] if str(exc) else "SIGINT"
    try:
        return 128 + signal.Signals[name]
    except KeyError:
        return 128 + signal.SIGINT
