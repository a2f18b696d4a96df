"""A simulation run: the host, its tenants (guests and processes), their clients, and the tick loop.

A tenant is an address space; its clients access it: its CPUs (vCPUs) through the primary table or a
secondary MMU (KVM), and any devices (RDMA NIC, GPU) through theirs. Each tick: host policies run
(``host_tick``), every client runs one batch of accesses, the invariants are checked, and one row of the
time series is recorded. A batch runs in the numba access
kernel; when the kernel stops to ask for reclaim (kswapd at the low watermark, direct reclaim at min, or
a notifier call for an exact-CLOCK victim) the loop in ``run_client`` serves it and resumes the kernel.

Time: every access and fault costs nanoseconds from the cost model. A client's CPUs share its accesses
evenly, so its time for a tick is its access and fault time divided by its CPU count, plus what stalled
all of them (TLB-flush IPIs, direct reclaim). The tick lasts as long as the slowest client; kswapd's work
is counted as host CPU time, in parallel.
"""

import logging
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import counters as C
from . import invariants
from .access import (
    COW_BREAK,
    DIRECT_COMPACT,
    DIRECT_RECLAIM,
    DONE,
    EVICT_ONE,
    FAULT_AROUND,
    K_FRAME,
    K_I,
    K_SKIP,
    K_VICTIM,
    K_WRECLAIMS,
    LIVELOCK,
    MIGRATE_TO_RAM,
    NUMA_MIGRATE,
    RACE_WINDOW,
    STALE_INSTALL,
    WAKE_KSWAPD,
    new_kernel_state,
    run_accesses,
)
from .actors import Actors
from .arguments import (
    OperationError,
    access_pages,
    check_ns,
    count_arg,
    first_outside,
    int_array,
    mm_arg,
    page_arg,
    range_arg,
    write_flags,
)
from .compaction import compact
from .components import Component, HostPolicy, Mode
from .config import ConfigError
from .costs import translation_ns, walk_refs
from .discovery import Registry, plugin_manager
from .fastpath import INVALIDATE_OPS, FastRoutes
from .frames import KSWAPD_FUTILE, LRU_LISTS, OOM_FLAGS, REG_FLAGS, REG_HINTS
from .host import OOM, Host
from .invariants import InvariantViolation
from .kernel import count_at_least, count_set
from .lru import flush_lru_stats
from .metrics import FRAMEWORK, Catalogue, MetricError, catalogue, describe, plugin_declarations, where_to_declare
from .migrate import migrate
from .mm import MM
from .notifier import FRAMEWORK_ERRORS, PluginError, component_label, guarded, plugin_error, plugin_label, unique_name
from .numafaults import FAILED, MIGRATED, NUMA_ACTOR, STATS, NumaFaults
from .oom import OOMKiller
from .pagebits import P_DEVICE, P_HUGE, S_HUGE
from .pagetable import MM_HUGEPAGE, read_only
from .reclaim import swap_out
from .secondary import DEV_NODE, IN_PROGRESS, MODE, RACE_RATE, SEC_NOFAULT, STATE_SIZE, SecondaryMMU
from .sectables import SecondaryTables
from .settings import Schedule, load_settings
from .share import break_cow
from .timeseries import TimeSeries
from .workingset import FaultCounts
from .workload import PAGE_DTYPE, WorkloadStream, client_streams

log = logging.getLogger("mmnsim")

SWAP_CLUSTER_MAX = 32  # pages direct reclaim asks for at least (mm/vmscan.c)
WINDOW_ACTOR = "kswapd (reclaim in a fault's race window)"
_NO_SUBS = np.zeros(0, dtype=np.int64)
_NO_NUMA = np.zeros(0, dtype=np.int8)
_NO_STATS = np.zeros((0, STATS), dtype=np.int64)


# Kernel counters also reported per secondary MMU kind (as "<name>.<counter>").
PER_SECONDARY = tuple(m.name for m in FRAMEWORK if m.per_secondary and m.name in C.NAMES)
_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_U8 = np.zeros(0, dtype=np.uint8)
_EMPTY_STATE = np.array([0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64)  # secondary.STATE_SIZE; DEV_NODE = -1


def _draw_ahead() -> bool:
    """Whether to draw workload batches on a second thread (``WorkloadStream.ahead``): when a core is spare,
    not in the jobs of a multirun, which fill the cores with jobs."""
    if (os.cpu_count() or 1) < 2:
        return False
    return not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN)


class Client:
    """Something that accesses an mm: its CPUs (``secondary`` None) or a device through a secondary MMU.

    A client's accesses are its workload's, shifted to its region of the mm, and shared evenly among its
    CPUs (vCPUs; a device counts as one), each on a NUMA node.
    """

    def __init__(self, tenant: "Tenant", vcpu_node: np.ndarray, stream: WorkloadStream, region: tuple[int, int],
                 batch: int):  # fmt: skip
        self.tenant = tenant
        self.batch = batch  # accesses per tick
        self.mm = tenant.mm
        self._set_nodes(vcpu_node.astype(np.int32))
        self.stream = stream
        self._region = tuple(region)
        self.secondary: SecondaryMMU | None = None
        self.elapsed_ns = 0.0  # time of one of its CPUs, summed over ticks
        self.stall_ns = 0.0  # part of elapsed_ns not spent on its own accesses
        self.guest_ns = 0.0  # part of elapsed_ns in guest mode (a vCPU): its accesses, its faults' world switches
        self._in_guest = 1.0  # that part of its last tick (before its first batch: all of it)
        self._batch_share: float | None = None  # that part of its batch so far, while the batch runs
        self.translation_ns = 0.0  # its accesses' page walks (all CPUs together)
        self._pending_stall = 0.0

    @property
    def name(self) -> str:
        return self.secondary.label if self.secondary is not None else f"cpu[{self.mm.name}]"

    @property
    def region(self) -> tuple[int, int]:
        """The pages [start, end) of the mm it accesses (its workload's pages are shifted there); read-only."""
        return self._region

    @property
    def vcpu_node(self) -> np.ndarray:
        """The NUMA node of each of its CPUs (read-only); a policy moves them by assigning a new array (a
        vCPU migration: ``client.vcpu_node = nodes``), one RAM node per CPU."""
        return self._vcpu_view

    def _set_nodes(self, nodes: np.ndarray) -> None:
        self._vcpu_node = nodes  # the kernel's (writable, as every other array it takes: one compiled variant)
        self._vcpu_view = read_only(nodes)

    @vcpu_node.setter
    def vcpu_node(self, nodes: np.ndarray) -> None:
        ram = self.tenant.mm.sim.host.nodes
        arr = int_array(nodes, "vcpu_node", "nodes")
        if arr.shape != self._vcpu_node.shape or first_outside(arr, 0, ram) >= 0:
            raise OperationError(f"vcpu_node: one RAM node (0..{ram - 1}) per CPU ({self.vcpus}) expected, got "
                                 f"{arr.tolist()[:8]}")  # fmt: skip
        self._set_nodes(arr.astype(np.int32))

    @property
    def vcpus(self) -> int:
        return int(self.vcpu_node.size)

    @property
    def done(self) -> bool:
        """Its workload is over, or its tenant was killed."""
        return self.stream.done or self.tenant.killed

    @property
    def in_guest(self) -> float:
        """The chance that one of its CPUs is on its own accesses at this moment (a vCPU: in guest mode, where
        a TLB-flush request reaches it by IPI), from 0 to 1: the share of its last tick they spent so, not
        serving faults in the host, not stalled, not idle once its batch was done (1 before its first tick). A
        secondary fault's world switch counts as guest mode (``SecondaryMMU.guest_mode_ns``: KVM's vcpu->mode
        is IN_GUEST_MODE from before the entry to after the exit).
        While its own batch runs (a flush from its own fault's reclaim, or from the kswapd it woke), the share of
        the batch so far. Under ``engine.schedule=serial``, 0 while another client's batch runs, or none."""
        sim = self.mm.sim
        if sim.running is self and self._batch_share is not None:
            return self._batch_share
        if sim.engine.schedule is Schedule.serial and sim.running is not self:
            return 0.0
        return self._in_guest

    def stall(self, ns: float) -> None:
        """All of this client's CPUs lose ``ns`` (a TLB-flush IPI, a direct-reclaim stall)."""
        check_ns(ns, "stall")
        self._pending_stall += ns


class Tenant:
    """A guest or process: its mm and the clients that access it."""

    def __init__(self, name: str, mm: MM, oom_score_adj: int = 0, guest_thp: bool = False):
        self.name = name
        self.mm = mm
        self.guest_thp = guest_thp  # a guest whose own kernel maps its memory with 2 MiB pages
        self.clients: list[Client] = []
        self.oom_score_adj = oom_score_adj
        self.killed = False  # by the OOM killer: its clients issue no more accesses

    @property
    def secondary(self) -> SecondaryMMU | None:
        """The main client's secondary MMU (a guest's KVM)."""
        return self.clients[0].secondary if self.clients else None


class Simulation:
    def __init__(self, cfg: DictConfig, plugins: Iterable[object] = ()):
        """Build the run described by ``cfg``; ``plugins`` are extra plugin modules (or objects) to
        register beside the discovered ones, for notebooks and tests."""
        self.cfg = cfg
        self.pm = plugin_manager()
        for plugin in plugins:
            self.pm.register(plugin)
        self.registry = Registry.from_plugins(self.pm)
        classes = [cls for kind in self.registry.classes.values() for cls in kind.values()]
        self.catalogue: Catalogue = catalogue(plugin_declarations([*self.pm.get_plugins(), *classes]))
        if cfg.get("backend", "sim") != "sim":  # the real twin is the mmnsim command's (mmnsim.real.run), not this
            raise ConfigError(f"backend={cfg.get('backend')}: the simulator runs backend=sim only")
        settings = load_settings(cfg, self.registry)
        self.seed = settings.seed
        self.host_cfg = settings.host
        self.engine = settings.engine
        self.costs = settings.costs
        self.kernel = settings.kernel  # which kernel's semantics (mmnsim.kernelconf): read by plugins
        specs = settings.tenants

        # Workloads first: building their tables needs scratch memory, better taken before the host's.
        streams, self.rng = client_streams(self.seed, specs, ahead=_draw_ahead())  # self.rng: for host policies

        device_pages = [c.device_pages for s in specs for c in s.clients if c.device_pages]
        self.host = Host(self.host_cfg, [s.pages for s in specs], device_pages, seed=self.seed)
        self.actors = Actors(self.host._pt.pte.size)  # who runs, and who last changed each page
        self.fast = FastRoutes(self)  # which subscribers reclaim's compiled path serves (mmnsim.fastpath)
        self._mm_faults = FaultCounts(len(specs))  # each mm's faults, for mm.counters() (mmnsim.workingset)
        self.numa: NumaFaults | None = None  # hinting faults handled in the fault, once a policy asks (numa_faults)
        device_nodes = iter(self.host.device_nodes)
        self._device_owner: dict[int, SecondaryMMU] = {}  # device-memory node -> its device (migrate_to_ram)
        self._secondary_tables = SecondaryTables(
            [0 if c.secondary[0].shares_cpu_tables else s.pages for s in specs for c in s.clients if c.secondary],
            STATE_SIZE,
        )
        self.mms: list[MM] = []
        self.tenants: list[Tenant] = []
        self.clients: list[Client] = []
        self.secondaries: list[SecondaryMMU] = []
        for i, spec in enumerate(specs):
            mm = MM(self, i, spec.name, spec.pages)
            mm.mmap(0, spec.pages, "rw")
            mm._set_flag(MM_HUGEPAGE, spec.madvise_hugepage)
            self.mms.append(mm)
            tenant = Tenant(spec.name, mm, spec.oom_score_adj, spec.guest_thp)
            for cspec, stream in zip(spec.clients, streams[i], strict=True):
                batch = cspec.accesses_per_tick or self.engine.accesses_per_tick
                client = Client(tenant, cspec.vcpu_nodes, stream, cspec.region, batch)
                if cspec.secondary is not None:
                    cls, scfg = cspec.secondary
                    client.secondary = guarded(self.actors.running, f"secondary MMU '{cls.name}[{mm.name}]'",
                                               "__init__", cls, self, client, scfg)  # fmt: skip
                    if cspec.device_pages:
                        client.secondary._state[DEV_NODE] = node = next(device_nodes)
                        self._device_owner[node] = client.secondary
                    client.secondary._state[RACE_RATE] = round(self.engine.race_window * 2**32)
                    self.secondaries.append(client.secondary)
                tenant.clients.append(client)
                self.clients.append(client)
            self.tenants.append(tenant)

        self.exact_clock = False  # set by a policy through use_exact_clock()
        self.policies: list[HostPolicy] = [
            guarded(self.actors.running, f"policy '{cls.name}'", "__init__", cls, self, pcfg)
            for cls, pcfg in settings.policies.values()
        ]
        forced = [s.label for s in self.secondaries if s.metrics.get("forced_pin")]
        if forced:
            log.warning("kernel=%s has no interval notifiers: %s registered by pinning (notifier mode forced to pin)",
                        self.kernel.name, ", ".join(forced))  # fmt: skip
        self.tick = 0  # before attaching: a registration may already reclaim and charge
        self.time_ns = 0.0
        self._tick_base_ns = 0.0  # ``now_ns``: when the running batch began (its tick's earlier serial batches in)
        self._batch_ns = 0.0  # ``now_ns``: the running batch's time so far, as its last episode estimated it
        self.host_cpu_ns = 0.0
        self.oom = OOMKiller(self) if self.host_cfg.oom is OOM.kill else None
        for comp in [*self.policies, *self.secondaries]:
            self.pm.register(comp, name=unique_name(self.pm, f"{comp.kind}:{getattr(comp, 'label', comp.name)}"))
        self._violations = np.zeros(len(invariants.KINDS), dtype=np.int64)  # by kind (the framework's)
        self.violations = read_only(self._violations)
        self._violation_messages: list[str] = []
        self._stale_noted: set[tuple[SecondaryMMU, str]] = set()  # (MMU, kind) of stale accesses named so far
        self.pinned_peak = 0
        self._timeseries = TimeSeries()  # bounded: every k-th tick once full, the last always
        self._charge_to: Tenant | None = None
        # The client one of whose CPUs is in the host serving a fault (its thread in reclaim, or asleep on the
        # fault's I/O), not in guest mode: a TLB-flush request reaches it at its next entry, with no IPI.
        self.outside: Client | None = None
        self.running: Client | None = None  # the client whose tick batch runs now (engine.schedule=serial)
        self.episode = 0  # the faults served so far (each with its own Python call): deferred_flushes counts them
        self._flushed_in: dict[int, tuple[int, int]] = {}
        self._each_window = False  # settling race windows done in the kernel: each was a fault of its own
        self._scratch = np.zeros(2, dtype=np.int64)  # the access kernel's room for a race window's page
        for sec in self.secondaries:  # last: a registration pins, may reclaim, and may even OOM-kill
            guarded(self.actors.running, component_label(sec), "attach", sec.attach)

    # -- services for plugins --

    @property
    def violation_messages(self) -> tuple[str, ...]:
        """Every violation message logged so far, each once, in order (the first of each kind per check)."""
        return tuple(self._violation_messages)

    @property
    def violations_expected(self) -> bool:
        """Whether this run's invariant violations are its point rather than a failure: a secondary MMU in
        ``unpinned`` mode (the unsafe strawman) keeps entries to frames reclaim frees. A run that fails on
        violations should not fail for this one; its violations are reported."""
        return any(s.mode is Mode.unpinned for s in self.secondaries)

    def use_exact_clock(self) -> None:
        """Make allocations evict one page at a time with the textbook CLOCK (see ``mmnsim.access``)."""
        self.exact_clock = True

    def use_lru_lists(self) -> None:
        """Keep the active/inactive LRU flags (``mmnsim.lru``) for a two-list policy: a KVM fault marks its page
        accessed, and a refault within the workingset starts active (from the policy's first ``lru_stats``)."""
        if self.exact_clock:
            raise OperationError("use_lru_lists: exact CLOCK keeps its own reference bits; use one or the other")
        self.host._ft.reg[REG_FLAGS] |= LRU_LISTS

    def deferred_flushes(self, owner: object, requests: int) -> int:
        """How many of ``requests`` TLB-flush requests ``owner``'s vCPU in the host (``outside``) performs: one
        at its next entry for all that came while it served one fault, or while it was out of the guest during one
        reclaim pass of a tick (vcpu_enter_guest checks KVM_REQ_TLB_FLUSH once)."""
        requests = count_arg(requests, "deferred_flushes", "requests")
        if self._each_window:
            return requests  # race windows settled together: each a fault of its own, one request each
        when = (self.tick, self.episode)  # a vCPU out of the guest for a whole tick re-entered it by the next
        if self._flushed_in.get(id(owner)) == when:
            return 0
        self._flushed_in[id(owner)] = when
        return 1

    def charge(self, ns: float) -> None:
        """Account ``ns`` of host work: to the stalled client in direct reclaim, else to host CPU time."""
        check_ns(ns, "charge")
        if self._charge_to is not None:
            self._charge_to.stall(ns)
        else:
            self.host_cpu_ns += ns

    def migrate(self, mm: MM, pages: np.ndarray, node: int, owner: object | None = None, keep_free: int = 0) -> int:
        """Move pages of ``mm`` to ``node`` (RAM or device memory); see ``mmnsim.migrate``."""
        return migrate(self, mm, pages, node, owner, keep_free)

    def populate(self, secondary: SecondaryMMU, start: int, end: int) -> int:
        """get_user_pages for ``secondary`` over pages [start, end): fault them in (writable) and install
        them in its table, pinning them in pin mode. Counts faults but no client accesses."""
        if not any(secondary is s for s in self.secondaries):
            raise OperationError(f"populate: not a secondary MMU of this simulation: {secondary!r}")
        start, end = range_arg(start, end, secondary.mm.npages, "populate")
        lo, hi = secondary.region
        if not lo <= start < end <= hi:
            raise OperationError(f"populate: range [{start}, {end}) is outside {secondary.label}'s region [{lo}, {hi})")
        host = self.host
        # gup: not client accesses or device faults
        kept = [C.ACCESSES, C.ACCESSES_ATTEMPTED, C.WRITES, C.WRITE_SEQ, C.SECONDARY_FAULTS, C.HUGE_ACCESSES,
                C.REMOTE_ACCESSES, C.ACCESS_DISTANCE]  # fmt: skip
        saved = host._ctr[kept].copy()
        state = secondary._state
        mode = state[MODE]
        state[MODE] = mode & ~SEC_NOFAULT  # gup faults pages in for a device that cannot
        try:
            pages = np.arange(start, end, dtype=PAGE_DTYPE)
            self._run_batch(secondary.mm, secondary, pages, np.zeros(pages.size, np.bool_),
                            self._client_of(secondary.mm, secondary), account=False)  # fmt: skip
        finally:
            secondary._state[MODE] = mode
            host._ctr[kept] = saved
        return int(count_at_least(secondary._spte[start:end], 0))

    def swap_in(self, mm: MM, pages: np.ndarray) -> int:
        """Fault the swapped-out ``pages`` of ``mm`` back in (do_swap_page), for the kernel itself rather
        than a client (khugepaged's __collapse_huge_page_swapin): major faults are counted, accesses are not,
        and the time is host CPU time. Returns how many of ``pages`` are present afterwards."""
        mm = mm_arg(self, mm, "swap_in")
        pages = access_pages(pages, mm.npages, "swap_in")
        host = self.host
        kept = [C.ACCESSES, C.WRITES, C.WRITE_SEQ]
        saved = host._ctr[kept].copy()
        try:
            self._run_batch(mm, None, pages, np.zeros(pages.size, np.bool_), None, account=False)
        finally:
            host._ctr[kept] = saved
        return int(np.count_nonzero(mm.pte[pages] >= 0))

    def counter(self, name: str) -> int:
        """The current value of a kernel counter (``mmnsim.counters.NAMES``)."""
        if name not in C.NAMES:
            raise OperationError(f"counter: unknown counter {name!r}; the names are mmnsim.counters.NAMES")
        return int(self.host._ctr[C.NAMES.index(name)])

    def take_hint_faults(self) -> np.ndarray:
        """The NUMA hinting faults (local and misplaced) logged since the last call, as rows (page key,
        accessing node), oldest first; the log is emptied. (At most ``frames.HINT_CAPACITY`` are kept between calls.)"""
        ft = self.host._ft
        n = int(ft.reg[REG_HINTS])
        ft.reg[REG_HINTS] = 0
        return ft.hints[:n].copy()

    def secondaries_of(self, mm: MM) -> list[SecondaryMMU]:
        """The secondary MMUs mapping ``mm`` (subscribed or not)."""
        mm = mm_arg(self, mm, "secondaries_of")
        return [s for s in self.secondaries if s.mm is mm]

    def mm_of_key(self, key: int) -> MM:
        """The mm holding the page of global key ``key`` (``mm.base + page``)."""
        key = page_arg(key, int(self.host._pt.mm_base[-1]), "mm_of_key", "key")
        return self.mms[int(np.searchsorted(self.host._pt.mm_base, key, side="right")) - 1]

    def components(self) -> list[Component]:
        return [*self.policies, *self.secondaries, *(c.stream.workload for c in self.clients)]

    # -- running --

    def run(self, progress: Callable[[float], None] | None = None, teardown: bool = False) -> dict[str, float]:
        """Tick until every client's stream is done; ``progress`` gets the fraction done after each tick.

        ``teardown``: then exit every process (release, unmap, device teardown) and check the invariants
        once more, so that a plugin that keeps entries or pins past its mm's exit is caught; the metrics
        are those before the teardown, with its violations added."""
        start = time.perf_counter()
        while not all(c.done for c in self.clients):
            self.step()
            if progress is not None:
                progress(self.fraction_done())
        metrics = self.metrics()
        metrics["wall_seconds"] = time.perf_counter() - start
        if teardown:
            for mm in self.mms:
                mm.exit()
            if self.engine.check_invariants:
                self._heading = "end-of-run check, after every process exited and every device was torn down"
                self.check_invariants()
            after = self.metrics()
            metrics.update({k: v for k, v in after.items() if k.endswith("violations")})
        return metrics

    def fraction_done(self) -> float:
        """Accesses issued over accesses to issue, over the clients whose total is known."""
        known = [c.stream for c in self.clients if c.stream.total]
        if not known:
            return 0.0
        return sum(s.issued for s in known) / sum(s.total for s in known)

    def step(self) -> None:
        """One tick."""
        self.host._ft.reg[REG_FLAGS] &= ~OOM_FLAGS
        oom_events = self.host._ctr[C.OOM_EVENTS]
        if self.oom is not None:
            self.oom.reap()  # the OOM reaper's next attempt on a victim whose memory a subscriber kept
        self.call_hook("host_tick", sim=self)
        serial = self.engine.schedule is Schedule.serial
        tick_ns = 0.0
        spans = []
        for client in self.clients:
            batch = None if client.tenant.killed else guarded(
                self.actors.running, f"workload '{client.stream.workload.name}' of {client.name}", "pages",
                client.stream.next_batch, client.batch, self.tick)  # fmt: skip
            before, guest = client.elapsed_ns, client.guest_ns
            self._tick_base_ns = self.time_ns + (tick_ns if serial else 0.0)
            if batch is not None:
                pages, writes = batch  # checked by next_batch: inside the client's region
                self.running = client
                try:
                    shifted = pages + client.region[0] if client.region[0] else pages
                    self._run_batch(client.mm, client.secondary, shifted, writes, client)
                finally:
                    self.running, client._batch_share = None, None
            self._settle_stalls(client)
            span = client.elapsed_ns - before
            spans.append((client, span, client.guest_ns - guest))
            if span > 0:  # until the tick's length is known (a later client's reclaim may flush this one)
                client._in_guest = min(1.0, (client.guest_ns - guest) / span)
            tick_ns = tick_ns + span if serial else max(tick_ns, span)
        for client, span, guest in spans:  # concurrent: a client done before the tick ends idles (halted)
            whole = span if serial else tick_ns
            client._in_guest = min(1.0, guest / whole) if whole > 0 else 0.0
        self.time_ns += tick_ns
        self._tick_base_ns = self.time_ns
        if self.host_cfg.read_stats_each_tick and self.host._ft.reg[REG_FLAGS] & LRU_LISTS:
            flush_lru_stats(self)  # a monitor's read of memory.stat (the real twin's per-tick row)
        if self.host._ctr[C.OOM_EVENTS] > oom_events:
            self.host._ctr[C.OOM_TICKS] += 1
        if self.oom is not None:
            self.oom.tick_done()
        if self.engine.check_invariants:
            self.check_invariants()
        self.pinned_peak = max(self.pinned_peak, self.host.pinned_pages())
        if self.engine.timeseries:
            self._timeseries.add(self.tick, self._sample())
        self.tick += 1

    def run_client(
        self,
        mm: MM,
        secondary: SecondaryMMU | None,
        pages: np.ndarray,
        writes: np.ndarray | None = None,
        client: Client | None = None,
        account: bool = True,
    ) -> None:
        """Run one batch of accesses by a client of ``mm`` (through ``secondary``, or the CPU).

        ``account=False`` leaves the client's time alone (for ``populate``)."""
        mm = mm_arg(self, mm, "run_client")
        if secondary is not None and not any(secondary is s and s.mm is mm for s in self.secondaries):
            raise OperationError(f"run_client: secondary must be None (the CPU) or a secondary MMU of mm '{mm.name}', "
                                 f"got {secondary!r}")  # fmt: skip
        if client is not None and not any(client is c and c.mm is mm and c.secondary is secondary
                                          for c in self.clients):  # fmt: skip
            raise OperationError(f"run_client: client must be None or the client of mm '{mm.name}' through that "
                                 f"secondary MMU, got {client!r}")  # fmt: skip
        pages = access_pages(pages, mm.npages, "run_client")
        writes = write_flags(writes, pages.size, "run_client")
        self._run_batch(mm, secondary, pages, writes, client or self._client_of(mm, secondary), bool(account))

    def _run_batch(self, mm: MM, secondary: SecondaryMMU | None, pages: np.ndarray, writes: np.ndarray,
                   client: Client | None, account: bool = True) -> None:  # fmt: skip
        """``run_client`` for a batch known to be good: int32 pages inside the mm, a bool per page."""
        host = self.host
        if secondary is not None and secondary._spte.size:  # the framework's own views (secondary.py): not
            # the plugin's attributes, which it may rebind or reshape
            spte, sflags, saccessed, sstate = secondary._spte, secondary._sflags, secondary._accessed, secondary._state
        else:
            spte, sflags, saccessed, sstate = _EMPTY_I32, _EMPTY_U8, _EMPTY_U8, _EMPTY_STATE
        vcpu_node = client._vcpu_node if client is not None else np.zeros(1, dtype=np.int32)
        ks = new_kernel_state()
        before = host._ctr.copy()
        faults = self._mm_faults.mark(host._ctr)
        tables = self._secondary_tables
        chain_subs, chain_fast, window_event, numa_event = self._chain_route(mm)
        numa_last, numa_stats = (self.numa.last_nid, self.numa.stats) if self.numa else (_NO_NUMA, _NO_STATS)
        generation = self.actors.generation
        self._charge_to = client
        outside, self.outside = self.outside, client
        try:
            while True:
                if self.actors.generation != generation:  # the event log was compacted: its indices moved
                    chain_subs, chain_fast, window_event, numa_event = self._chain_route(mm)
                    generation = self.actors.generation
                status = run_accesses(
                    pages, writes, ks, host._ctr, mm.index, spte, sflags, saccessed, sstate, vcpu_node,
                    self.exact_clock, self.engine.check_accesses, chain_subs, chain_fast, window_event, numa_last,
                    numa_stats, numa_event, tables.offset, tables.spte, tables.sflags, tables.shadow, tables.state,
                    tables.acc, self.actors._changed, self._scratch, *host._flat,
                )  # fmt: skip
                if ks[K_WRECLAIMS]:
                    self._settle_windows(mm, chain_subs, ks)
                if self.numa:
                    self.numa.settle(client)
                if status == DONE:
                    break
                self.episode += 1
                if client is not None and client is self.running:
                    access, host_ns, switches = self._batch_parts(client, host._ctr - before)
                    share = (access + switches) / (access + host_ns) if access + host_ns > 0 else -1.0
                    client._batch_share = share if 0.0 <= share <= 1.0 else None  # None: its last tick's share
                    spent = (access + host_ns) / client.vcpus
                    self._batch_ns = spent if 0.0 <= spent < math.inf else self._batch_ns
                if status == WAKE_KSWAPD:
                    self._wake_kswapd()
                elif status == DIRECT_RECLAIM:
                    host._ctr[C.DIRECT_RECLAIMS] += 1
                    self._reclaim(max(SWAP_CLUSTER_MAX, host.pages_to_low()), direct=True)
                    if self.oom is not None and not host.above_min():  # __alloc_pages_may_oom
                        victim = self.oom.out_of_memory()
                        if victim is not None:  # an OOM event that freed memory; one that could not kill lets
                            host._ctr[C.OOM_EVENTS] += 1  # the allocation fail, counted there (_fail_allocation)
                        if victim is not None and client is not None and victim is client.tenant:
                            break  # SIGKILL: the faulting client itself is gone
                elif status == EVICT_ONE:
                    write_errors = host._ctr[C.SWAP_WRITE_ERRORS]
                    if swap_out(self, np.array([ks[K_VICTIM]])) == 0 and host._ctr[C.SWAP_WRITE_ERRORS] == write_errors:
                        host._ft.reg[REG_FLAGS] |= OOM_FLAGS  # the allocation fails, and counts an oom_event
                elif status == MIGRATE_TO_RAM:
                    self._migrate_to_ram(int(ks[K_VICTIM]), int(vcpu_node[0]), ks)
                elif status == COW_BREAK:
                    break_cow(self, int(ks[K_VICTIM]), int(ks[K_FRAME]))
                elif status == DIRECT_COMPACT:
                    self._direct_compact(int(ks[K_FRAME]))
                elif status == FAULT_AROUND:
                    charge_to = self._charge_to
                    try:
                        guarded(self.actors.running, component_label(secondary), "fault_around",
                                secondary.fault_around, int(ks[K_VICTIM]))  # fmt: skip
                    finally:
                        self._charge_to = charge_to
                elif status == RACE_WINDOW:
                    self._race_window(int(ks[K_VICTIM]))
                elif status == NUMA_MIGRATE:
                    self._numa_migrate(mm, int(ks[K_VICTIM]), int(ks[K_FRAME]))
                elif status == STALE_INSTALL:
                    invariants.verify_install(self, secondary, int(ks[K_VICTIM]))
                elif status == LIVELOCK:
                    raise PluginError(
                        f"secondary MMU '{secondary.label}' kept its fault path retrying: state[IN_PROGRESS] is "
                        f"{int(sstate[IN_PROGRESS])} outside any invalidation (begin_invalidate and end_invalidate "
                        "must pair up) or its sequence moves on every try"
                    )
        finally:
            self._charge_to = None
            self.outside = outside
            self._batch_ns = 0.0
            host._ctr[C.ACCESSES_ATTEMPTED] += int(ks[K_I])  # every access up to where the kernel stopped
            self._mm_faults.settle(mm.index, host._ctr, faults)  # this batch's faults are its mm's
        if self.engine.check_accesses and secondary is not None:
            self._note_stale_accesses(secondary, before)
        if client is not None and account:
            self._account(client, host._ctr - before)

    def _note_stale_accesses(self, secondary: SecondaryMMU, before: np.ndarray) -> None:
        """With ``engine.check_accesses`` the access kernel counts each access through an entry whose frame no
        longer holds its page: name the MMU whose accesses they were, once, as a violation message (the
        counts are the counters ``coherence_violations``, ``isolation_violations``, ``stale_*``)."""
        ctr = self.host._ctr
        for kind, counter in (("coherence", C.COHERENCE_VIOLATIONS), ("isolation", C.ISOLATION_VIOLATIONS)):
            if ctr[counter] == before[counter] or (secondary, kind) in self._stale_noted:
                continue
            self._stale_noted.add((secondary, kind))
            where = "a frame no longer holding the page" if kind == "coherence" else "a free frame or another mm's"
            message = (f"{kind}: {secondary.label} accessed memory through an entry mapping {where}, at tick "
                       f"{self.tick} (counted on every access by engine.check_accesses: {kind}_violations, "
                       f"stale_reads, stale_writes). Culprit: {secondary.label}'s stale entries")  # fmt: skip
            self.report_violations(invariants.Report(messages=[message]))

    def _chain_route(self, mm: MM) -> tuple[np.ndarray, bool, int, int]:
        """What the access kernel needs to act on ``mm``'s notifier chain itself: its subscribers, whether the
        compiled path serves every one (``mmnsim.fastpath``; then the kernel reclaims in a race window and
        migrates in a NUMA hinting fault without returning to Python), and the events it then records."""
        subs = None if self.kernel.invalidate_page else self.fast.subscribers(mm, INVALIDATE_OPS)
        if subs is None:
            return _NO_SUBS, False, -1, -1
        with self.actors.acting(WINDOW_ACTOR):
            window = self.actors.event(f"CLEAR of mm '{mm.name}'", self.tick)
        with self.actors.acting(NUMA_ACTOR):
            numa = self.actors.event(f"CLEAR of mm '{mm.name}'", self.tick) if self.numa else -1
        return subs, True, window, numa

    def _numa_migrate(self, mm: MM, key: int, node: int) -> None:
        """migrate_misplaced_folio in a hinting fault the kernel could not do itself: a THP (split first), or an
        mm with a subscriber the compiled path does not serve."""
        stats = self.numa.stats
        refused = self.host._ctr[C.MIGRATIONS_REFUSED]
        with self.actors.acting(NUMA_ACTOR):
            moved = self.migrate(mm, np.array([key - mm.base]), node, keep_free=int(self.host.watermarks[node, 2]))
        stats[mm.index, MIGRATED] += moved
        stats[mm.index, FAILED] += int(self.host._ctr[C.MIGRATIONS_REFUSED] - refused)

    def numa_faults(self, migrate_page_ns: float) -> NumaFaults:
        """Have the access kernel handle NUMA hinting faults as the kernel does, in the fault: the two-stage
        filter and the migration (``mmnsim.numafaults``); ``migrate_page_ns`` is what the faulting task pays a
        page. For a NUMA balancing policy; returns the object whose ``stats`` it reads and keeps."""
        check_ns(migrate_page_ns, "numa_faults")
        if self.numa is None:
            self.numa = NumaFaults(self, migrate_page_ns)
        return self.numa

    def _settle_windows(self, mm: MM, subs: np.ndarray, ks: np.ndarray) -> None:
        """Charge the race windows' reclaim the access kernel ran itself: kswapd's work, on its own CPU."""
        charge_to, self._charge_to = self._charge_to, None
        self._each_window = True
        try:
            for j in subs.tolist():
                self.secondaries[j]._settle_invalidation()
        finally:
            self._charge_to = charge_to
            self._each_window = False
        mm.chain.invalidate_seq += 2 * int(ks[K_WRECLAIMS])  # each window's start and end
        ks[K_WRECLAIMS] = 0

    def _race_window(self, key: int) -> None:
        """A secondary fault on page ``key`` sleeps before installing its entry, and the host runs: kswapd
        reclaims the page it just resolved (``swap_out``, under a CLEAR invalidation of the page), as
        reclaim, NUMA migration or compaction may in the kernel while a fault waits for I/O. The fault then
        resumes and must retry by the sequence protocol."""
        self.host._ctr[C.RACE_WINDOWS] += 1
        frame = int(self.host._pt.pte[key])
        if frame < 0 or self.host._ft.pin[frame] > 0 or self.host._ft.key[frame] != key:
            return  # nothing to reclaim: a shared (KSM) or pinned frame stays
        charge_to, self._charge_to = self._charge_to, None  # kswapd runs on its own CPU
        try:
            with self.actors.acting(WINDOW_ACTOR):
                swap_out(self, np.array([frame]))
        finally:
            self._charge_to = charge_to

    def _migrate_to_ram(self, key: int, node: int, ks: np.ndarray) -> None:
        """A CPU or another device touched a device-private page: its device brings it back to RAM."""
        mm = self.mm_of_key(key)
        frame_node = self.host.node_of(int(self.host._pt.pte[key]))
        owner = self._device_owner[frame_node]  # the framework's own record: a plugin's state may say otherwise
        guarded(self.actors.running, component_label(owner), "migrate_to_ram", owner.migrate_to_ram,
                np.array([key - mm.base]), node)  # fmt: skip
        if self.host._pt.flags[key] & P_DEVICE:  # no room in RAM even so: the access fails
            self.host._ctr[C.ALLOC_FAILURES] += 1
            ks[K_SKIP] = 1

    def _direct_compact(self, nid: int) -> None:
        """__alloc_pages_direct_compact for a THP fault in an MADV_HUGEPAGE region: compact the nodes in
        the faulting node's order until one pageblock is free; the faulting client waits for the copies.
        The fault then retries its THP once (and falls back to 4 KiB pages if it still finds none)."""
        host = self.host
        host._ctr[C.COMPACT_STALL] += 1
        before = host._ctr[C.PAGES_MIGRATED]
        for n in host.ft.node_order[nid]:
            if n < host.nodes and compact(self, int(n), 1):
                break
        self.charge(float(host._ctr[C.PAGES_MIGRATED] - before) * self.costs.compact_page_ns)

    def _client_of(self, mm: MM, secondary: SecondaryMMU | None) -> Client | None:
        return next((c for c in self.clients if c.mm is mm and c.secondary is secondary), None)

    def _wake_kswapd(self) -> None:
        """kswapd, run to completion: like kswapd_shrink_node, it asks for the high watermark's worth of
        pages (at least what brings every node back above high)."""
        self.host._ctr[C.KSWAPD_WAKEUPS] += 1
        charge_to, self._charge_to = self._charge_to, None  # kswapd runs on its own CPU, while the vCPUs run
        outside, self.outside = self.outside, None
        try:
            freed = self._reclaim(max(self.host.pages_to_high(), self.host.high_watermarks()), direct=False)
        finally:
            self._charge_to = charge_to
            self.outside = outside
        if freed == 0:
            self.host._ft.reg[REG_FLAGS] |= KSWAPD_FUTILE

    def _reclaim(self, nr_pages: int, direct: bool) -> int:
        answers = self.call_hook("reclaim", firstresult=True, who=True, sim=self, nr_pages=nr_pages, direct=direct)
        if not answers:
            return 0
        who, freed = answers[0]
        if isinstance(freed, bool | np.bool_) or not isinstance(freed, numbers.Integral) or freed < 0:
            raise PluginError(f"{who} returned {freed!r} from reclaim; expected the number of frames it freed, an "
                              "integer >= 0")  # fmt: skip
        return int(freed)

    def call_hook(self, name: str, firstresult: bool = False, who: bool = False, **kwargs) -> list:
        """Call framework hook ``name`` on every plugin implementing it, in pluggy's order (the last
        registered first), each as the current actor; return the non-None results (only the first, with
        ``firstresult``; ``who``: as (plugin label, result) pairs). An exception in a plugin becomes a
        one-line ``PluginError`` naming the plugin and the hook, with the traceback in the log."""
        results = []
        for impl in reversed(getattr(self.pm.hook, name).get_hookimpls()):
            label = plugin_label(impl.plugin_name)
            with self.actors.acting(f"{label} in {name}"):
                try:
                    res = impl.function(*[kwargs[a] for a in impl.argnames])
                except FRAMEWORK_ERRORS:
                    raise
                except Exception as exc:
                    raise plugin_error(label, name, exc) from exc
            if name == "host_tick" and isinstance(impl.plugin, SecondaryMMU) and self.engine.check_invariants:
                self._check_after(impl.plugin, f"after {label} in host_tick")  # entries its own code installed
            if res is not None:
                results.append((label, res) if who else res)
                if firstresult:
                    break
        return results

    def _access_ns(self, d: np.ndarray) -> float:
        """The memory time of the accesses counted in ``d`` (their translation aside)."""
        numa = self.host._ft.node.shape[0] > 1  # the kernel sums access distances only then
        return self.costs.access_ns * (d[C.ACCESS_DISTANCE] / 10 if numa else d[C.ACCESSES])

    def _host_fault_ns(self, d: np.ndarray) -> float:
        """The host's time for the primary faults counted in ``d``: minor faults and swap-ins."""
        return d[C.MINOR_FAULTS] * self.costs.minor_fault_ns + d[C.MAJOR_FAULTS] * self.costs.swap_in_ns

    def _batch_parts(self, client: Client, d: np.ndarray) -> tuple[float, float, float]:
        """The time ``client``'s CPUs have spent in the batch so far (``d`` its counts), all CPUs together: on
        their own accesses; in the host (its faults, the secondary faults at their base cost: ``fault_ns``,
        a plugin's own ``fault_cost_ns`` being asked once, at the batch's end; its stalls); and of the host's
        part, in the secondary faults' world switches (``guest_mode_ns``). A plugin's own config may be
        anything by now: the callers check what they make of them."""
        access = float(self._access_ns(d))
        host = float(self._host_fault_ns(d)) + client._pending_stall * client.vcpus
        switches = 0.0
        sec = client.secondary
        if sec is not None:
            faults = int(d[C.SECONDARY_FAULTS] + d[C.FAULT_RETRIES])
            host += faults * float(sec.cfg.fault_ns)
            switches = self._ns_from(sec, "guest_mode_ns", faults)
        return access, host, switches

    def now_ns(self) -> float:
        """The simulated time now, in ns since the run began: the ticks done and, inside a tick, the batches run
        before this one (under ``engine.schedule=serial``; side by side otherwise), and the running batch so far
        as its last episode (a fault that left the access kernel: a reclaim, a kswapd wake-up) estimated it
        (``_batch_parts``, over the client's CPUs). For what happens at a time (a periodic flush), not for what a
        run costs: a batch's time is settled at its end."""
        return self._tick_base_ns + self._batch_ns

    def _account(self, client: Client, d: np.ndarray) -> None:
        c = self.costs
        access = self._access_ns(d)
        swap_in = d[C.MAJOR_FAULTS] * c.swap_in_ns
        faults = self._host_fault_ns(d)
        sec = client.secondary
        if sec is not None:
            walk, tlb_huge = self._plugin_walk(sec), bool(self._ask(sec, "tlb_huge"))
        else:  # the CPU's own 4-level walk; one level less through a PMD
            walk, tlb_huge = (lambda huge: walk_refs(c.pwc_miss, 3 if huge else 4)), True
        translation = translation_ns(c, int(d[C.ACCESSES]), int(d[C.HUGE_ACCESSES]),
                                     client.region[1] - client.region[0], walk, tlb_huge)  # fmt: skip
        client.translation_ns += translation
        access += translation
        if sec is not None and not sec._spte.size:  # shares the CPU tables: its faults there are I/O page faults
            iopf = d[C.MINOR_FAULTS] + d[C.MAJOR_FAULTS]
            d[C.SECONDARY_FAULTS] += iopf
            self.host._ctr[C.SECONDARY_FAULTS] += iopf
        switches = 0.0
        if sec is not None:
            sec._counts["translation_ns"] += translation
            sec_faults = int(d[C.SECONDARY_FAULTS] + d[C.FAULT_RETRIES])
            faults += self._ns_from(sec, "fault_cost_ns", sec_faults)
            switches = self._ns_from(sec, "guest_mode_ns", sec_faults)
            for name in PER_SECONDARY:
                sec._counts[name] += int(d[C.NAMES.index(name)])
        spread = (access + faults) / client.vcpus
        # A fault's world switch is part of its cost (faults) and guest mode to a flush request (in_guest).
        client.guest_ns += (access + min(switches, faults)) / client.vcpus
        if c.swap_serial and swap_in > spread:
            # One disk reads one page at a time: the vCPUs queue for it, and the batch takes at least the
            # disk's busy time however many vCPUs share the rest (the bottleneck bound of a closed system).
            client.elapsed_ns += swap_in
            client.stall_ns += swap_in - access / client.vcpus
        else:
            client.elapsed_ns += spread
            client.stall_ns += faults / client.vcpus

    def _ask(self, comp: Component, method: str, *args: object) -> object:
        """Call ``comp``'s own ``method`` (a plugin's code, not a hook) as the hooks are called (``guarded``)."""
        return guarded(self.actors.running, component_label(comp), method, getattr(comp, method), *args)

    def _ns_from(self, comp: Component, method: str, *args: object) -> float:
        """``_ask`` for a number the run adds up (a time, a count of references): finite and >= 0."""
        value = self._ask(comp, method, *args)
        try:
            ok = 0.0 <= value < math.inf  # NaN compares false: a NaN would spoil every sum it joins
        except TypeError:
            ok = False
        if not ok:
            raise PluginError(f"{component_label(comp)} returned {value!r} from {method}; expected a finite number "
                              ">= 0")  # fmt: skip
        return float(value)

    def _plugin_walk(self, sec: SecondaryMMU) -> Callable[[bool], float]:
        return lambda huge: self._ns_from(sec, "walk_refs", huge)

    def _settle_stalls(self, client: Client) -> None:
        client.elapsed_ns += client._pending_stall
        client.stall_ns += client._pending_stall
        client._pending_stall = 0.0

    def _check_after(self, secondary: SecondaryMMU, heading: str) -> None:
        """Check ``secondary``'s table now, the moment its plugin code returned (an entry it installed may be
        gone by the end of the tick)."""
        report = invariants.check_table(self, secondary)
        if report:
            report.messages = [f"{m} [{heading}]" for m in report.messages]
            self.report_violations(report)

    def check_invariants(self) -> invariants.Report:
        report = invariants.check(self)
        if report:
            self.report_violations(report)
        return report

    def report_violations(self, report: invariants.Report) -> None:
        """Count a report's violations, log each new message once, and stop if the engine says so."""
        self._violations += report.counts
        new = [m for m in report.messages if m not in self._violation_messages]
        heading = getattr(self, "_heading", None)
        if heading and new:
            log.warning("%s: %d violations", heading, int(report.counts.sum()))
            new = [f"[{heading}] {m}" for m in new]
        for message in new:
            log.warning("tick %d: invariant violated: %s", self.tick, message)
        self._violation_messages.extend(new)
        if self.engine.stop_on_violation:
            raise InvariantViolation(f"tick {self.tick}: " + "; ".join(report.messages))

    # -- results --

    def _sample(self) -> dict[str, float]:
        row: dict[str, float] = {"tick": self.tick, "sim_time_ns": self.time_ns}
        row.update(C.as_dict(self.host._ctr))
        row["free_frames"] = self.host.free_frames()
        row["pinned_pages"] = self.host.pinned_pages()
        row["swap_used"] = self.host.swap_used()
        row["resident_pages"] = int(sum(count_at_least(mm.pte, 0) for mm in self.mms))
        row["secondary_mapped_pages"] = sum(s.mapped_pages() for s in self.secondaries)
        return row

    def metrics(self) -> dict[str, float]:
        """Every metric of the run so far, by name, each of its declared type (``mmnsim.metrics``). A
        secondary MMU's own metrics are summed over all of them under their name, and also reported per kind
        as "<name>.<metric>" with its counters. A metric nobody declared raises ``MetricError``."""
        cat = self.catalogue
        out: dict[str, float] = dict(C.as_dict(self.host._ctr))
        for impl in reversed(self.pm.hook.collect_metrics.get_hookimpls()):
            who = f"plugin '{impl.plugin_name}' ({describe(impl.plugin)})"
            label = plugin_label(impl.plugin_name)
            with self.actors.acting(f"{label} in collect_metrics"):
                try:
                    contribution = impl.function(sim=self)
                except FRAMEWORK_ERRORS:
                    raise
                except Exception as exc:
                    raise plugin_error(label, "collect_metrics", exc) from exc
            if contribution is not None and not isinstance(contribution, dict):
                raise PluginError(f"{label} returned {contribution!r} from collect_metrics; expected a dict of "
                                  "metrics (name -> number)")  # fmt: skip
            for name, value in (contribution or {}).items():
                self._check_declared(cat, impl.plugin, who, name, value)
                out[name] = out.get(name, 0) + value
        for name in ("pages_zapped", "tlb_flushes", "tlb_flush_ipis", "flush_cost_ns"):
            out.setdefault(name, 0)
        for sec in self.secondaries:
            for name, value in sec.metrics.items():
                self._check_declared(cat, sec, f"secondary MMU '{sec.label}' ({describe(sec)})", name, value)
                out[name] = out.get(name, 0) + value
            for name, value in [*sec.metrics.items(), *sec._counts.items()]:
                out[f"{sec.name}.{name}"] = out.get(f"{sec.name}.{name}", 0) + value
        self.pinned_peak = max(self.pinned_peak, self.host.pinned_pages())
        out["pinned_pages"] = self.host.pinned_pages()
        out["pinned_pages_peak"] = self.pinned_peak
        out["swap_used"] = self.host.swap_used()
        out["free_frames"] = self.host.free_frames()
        for kind, count in zip(invariants.KINDS, self.violations, strict=True):
            out[f"{kind}_violations"] = out.get(f"{kind}_violations", 0) + int(count)
        out["invariant_violations"] = int(sum(out[f"{k}_violations"] for k in invariants.KINDS))
        out["ticks"] = self.tick
        out["oom_victims"] = self.oom.victims() if self.oom is not None else ""
        out["sim_time_ns"] = self.time_ns
        out["sim_time_ns_per_access"] = self.time_ns / out["accesses"] if out["accesses"] else 0.0
        out["host_cpu_ns"] = self.host_cpu_ns
        elapsed = sum(c.elapsed_ns for c in self.clients)
        stall = sum(c.stall_ns for c in self.clients)
        out["guest_stall_ns"] = stall
        out["accesses_failed"] = out["accesses_attempted"] - out["accesses"]
        out["translation_ns"] = sum(c.translation_ns for c in self.clients)
        out["translation_ns_per_access"] = out["translation_ns"] / out["accesses"] if out["accesses"] else 0.0
        guests = [t.mm for t in self.tenants if t.secondary is not None] or [t.mm for t in self.tenants]
        pages = sum(mm.npages for mm in guests)
        out["thp_coverage"] = sum(int(count_set(mm.flags, P_HUGE)) for mm in guests) / pages
        for sec in self.secondaries:
            mapped = sec.mapped_pages()
            huge = int(count_set(sec._sflags, S_HUGE))
            out[f"{sec.name}.huge_mapped_fraction"] = huge / mapped if mapped else 0.0
            accesses = out.get(f"{sec.name}.accesses", 0)  # none if its client never ran (killed first)
            out[f"{sec.name}.accesses_failed"] = out.get(f"{sec.name}.accesses_attempted", 0) - accesses
            per_access = out[f"{sec.name}.translation_ns"] / accesses if accesses else 0.0
            out[f"{sec.name}.translation_ns_per_access"] = per_access
        out["stall_fraction"] = stall / elapsed if elapsed else 0.0
        out["remote_access_fraction"] = out["remote_accesses"] / out["accesses"] if out["accesses"] else 0.0
        numa = self.host._ft.node.shape[0] > 1
        per_access = out["access_distance"] / 10 / out["accesses"] if numa and out["accesses"] else 1.0
        out["effective_access_ns"] = self.costs.access_ns * per_access  # memory access time, by distance
        where = where_to_declare(None)
        return {name: cat.coerce(name, value, "the framework", where) for name, value in out.items()}

    @staticmethod
    def _check_declared(cat: Catalogue, plugin: object, who: str, name: str, value: float) -> None:
        """A plugin reports only the framework's metrics and those its own class (or module) declares."""
        declared = {m.name for m in getattr(plugin, "declared_metrics", ())}
        if name not in declared and cat.declared_by.get(name) != ["framework"]:
            raise MetricError(f"{who} reports the metric {name!r}, which it does not declare: "
                              f"{where_to_declare(plugin)}")  # fmt: skip
        cat.coerce(name, value, who, "")  # a count must be whole

    @property
    def timeseries(self) -> list[dict[str, float]]:
        """The time series' rows so far: every tick up to ``timeseries.MAX_ROWS``, then evenly spaced
        ticks and the last (``framework/timeseries.py``)."""
        return self._timeseries.to_list()

    def timeseries_rows(self) -> list[dict[str, float]]:
        return self.timeseries
