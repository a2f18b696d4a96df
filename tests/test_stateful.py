"""Random operation sequences over random small hosts, with every invariant checked after every step.

A hypothesis ``RuleBasedStateMachine`` builds a tiny host (4 to 12 MiB of RAM, one or two NUMA nodes, THP
on or off, LRU or exact-CLOCK swap, small or failing swap, optionally defrag, NUMA balancing and eager
release) with a 4 MiB guest mapped by KVM, an RDMA NIC, a GPU (optionally with device memory) or nothing,
in pin or notifier mode, up to two more devices on the same mm, and optionally a second address space (a
plain process or a second KVM guest). It then runs a random sequence of:

* mm operations: CPU reads and writes of page ranges, mmap, munmap, mprotect (none / r / rw), madvise
  DONTNEED, scattered discards, writeback's write-protect (mkclean) and a soft-dirty clear, process exit;
* secondary accesses: a device's reads and writes inside its region, get_user_pages populate, whole ticks
  (``sim.step``: every client's batch and every host policy);
* policy actions: reclaim through the swap policy, ``swap_out`` of chosen pages, migration between nodes,
  compaction, khugepaged collapse and THP split, KSM merging (and copy-on-write by writes), the GPU's
  migration into device memory, and letting simulated time pass so that khugepaged and NUMA scans fire.

After every step ``sim.check_invariants()`` must be clean, nothing may have been counted as a violation
anywhere (``sim.violations``, the access-time counters), and a few structural properties the checks
assume must hold (THP shape, device-private pages, subscribed secondaries never keeping a translation
that the primary's protection forbids, regions, exited mms).

Pin mode is the 2008 design: a pinning device is not told about munmap or DONTNEED, so its stale entries
are the coherence hole the invariant checks exist to report. The sequences here play a correct
pre-notifier application, which unregisters the pinned range (``SecondaryMMU.zap``) before it unmaps it;
one rule unmaps without doing so and checks that exactly the hole is reported, no more and no less.

Private API used: ``Simulation._reclaim`` (reclaim as kswapd or direct reclaim asks the policy for it).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    precondition,
    rule,
)
from omegaconf import open_dict

from conftest import config
from mmnsim import Simulation, invariants, is_shared, merge_pages, swap_out
from mmnsim.compaction import compact
from mmnsim.frames import ORPHAN, PAGEBLOCK_SHIFT, PB_NODE
from mmnsim.pagebits import (
    HUGE_PAGES,
    P_DEVICE,
    P_DIRTY,
    P_HUGE,
    P_PROTNONE,
    P_READ,
    P_VMA,
    P_VMA_RW,
    P_WRITE,
    PTE_NONE,
    S_PINNED,
    S_WRITABLE,
)
from mmnsim.secondary import MODE, SEC_PIN
from mmnsim.thp import collapse, split

MIB = 256  # pages
GUEST_MIB = 4
PROCESS_MIB = 2
MIN_STEPS = 10_000
STEPS_PER_EXAMPLE = 100
# A longer run: MMNSIM_STATEFUL_EXAMPLES=2000 (examples of up to 100 steps each); MMNSIM_STATEFUL_SEED=N
# draws the examples from seed N instead of the fixed derandomized sequence CI runs ("random": a fresh seed,
# printed, so that a failure can be run again).
EXAMPLES = int(os.environ.get("MMNSIM_STATEFUL_EXAMPLES", "160"))
SEED = os.environ.get("MMNSIM_STATEFUL_SEED", "")

STEPS = 0  # rules run, over every example of the run


# -- the random configuration --


@dataclass(frozen=True)
class Device:
    name: str  # rdma or gpu
    mode: str
    region_start_mib: int
    region_mib: int | None
    device_memory_mib: int  # gpu only


@dataclass(frozen=True)
class Setup:
    secondary: str  # of the guest: kvm, rdma, gpu or none
    mode: str
    region_start_mib: int  # rdma, gpu
    region_mib: int | None
    device_memory_mib: int  # gpu
    devices: tuple[Device, ...]  # more devices on the guest's mm
    process: str | None  # a second mm: None, "none" (a plain process) or "kvm" (a second guest)
    process_mode: str
    nodes: int
    thp: bool
    host_mib: int
    swap_mib: int
    swap_errors: float  # swap I/O fault injection: the probability of a failed write, and of a failed read
    swap_mode: str
    defrag: bool
    numa: bool
    eager_release: bool
    workload: str
    boot_writes: bool
    accesses_per_tick: int
    check_accesses: bool
    race_window: float  # share of secondary faults that sleep while kswapd reclaims their page
    seed: int


def _region(draw) -> tuple[int, int | None]:
    start = draw(st.integers(0, GUEST_MIB - 1))
    size = draw(st.one_of(st.none(), st.integers(1, GUEST_MIB - start)))
    return start, size


@st.composite
def setups(draw) -> Setup:
    secondary = draw(st.sampled_from(["kvm", "rdma", "gpu", "none", "kvm", "gpu"]))
    start, size = _region(draw) if secondary in ("rdma", "gpu") else (0, None)
    mode = draw(st.sampled_from(["pin", "notifier", "notifier"]))
    devices = []
    for name in draw(st.sampled_from([(), ("rdma",), ("gpu",), ("rdma", "gpu"), ("gpu", "rdma")])):
        dstart, dsize = _region(draw)
        devices.append(Device(name, draw(st.sampled_from(["pin", "notifier", "notifier"])), dstart, dsize, 0))
    process = draw(st.sampled_from([None, "none", "kvm"]))
    process_mode = draw(st.sampled_from(["pin", "notifier"]))
    vram = draw(st.sampled_from([0, 1, 4, 4]))
    if vram and secondary != "gpu" and any(d.name == "gpu" for d in devices):
        devices = [replace(d, device_memory_mib=vram) if d.name == "gpu" else d for d in devices]
    host_mib = draw(st.sampled_from([4, 6, 8, 12]))
    nodes = draw(st.integers(1, 2))
    return Setup(
        secondary=secondary,
        mode=mode,
        region_start_mib=start,
        region_mib=size,
        device_memory_mib=vram if secondary == "gpu" else 0,
        devices=tuple(devices),
        process=process,
        process_mode=process_mode,
        nodes=nodes,
        thp=draw(st.booleans()),
        host_mib=host_mib,
        swap_mib=draw(st.sampled_from([2, 16, 16])),  # 2 MiB: swap fills up
        swap_errors=draw(st.sampled_from([0.0, 0.0, 0.25])),
        swap_mode=draw(st.sampled_from(["lru", "lru", "clock"])),
        defrag=draw(st.booleans()),
        numa=nodes == 2 and draw(st.sampled_from([False, True, True])),
        eager_release=draw(st.integers(0, 4)) == 0,
        workload=draw(st.sampled_from(["uniform", "zipf", "hotcold"])),
        boot_writes=draw(st.booleans()),
        accesses_per_tick=draw(st.sampled_from([32, 128, 512])),
        check_accesses=draw(st.booleans()),
        race_window=draw(st.sampled_from([0.0, 0.01, 0.2, 0.2])),
        seed=draw(st.integers(0, 2**16)),
    )


@functools.cache
def _base(secondary: str, workload: str):
    """The composed config for a secondary and a workload, with every policy this test may use: composing
    takes ~0.1 s, so each pair is composed once and copied."""
    return config(f"secondary={secondary}", f"workload={workload}", "policies=[swap,defrag,numa,eager_release]")


def _secondary_settings(name: str, mode: str, start: int, size: int | None, vram: int) -> dict:
    out: dict = {"name": name, "mode": mode}
    if name in ("rdma", "gpu"):
        out |= {"region_start_mib": start, "region_mib": size}
    if name == "gpu":
        out |= {"device_memory_mib": vram, "migrate_hot_pages": 64 if vram else 0}
    return out


def build(s: Setup) -> Simulation:
    cfg = copy.deepcopy(_base(s.secondary, s.workload))
    wl = {"name": "uniform", "accesses": 10**9, "write_fraction": 0.3, "boot_writes": s.boot_writes}
    with open_dict(cfg):
        cfg.seed = s.seed
        cfg.host.memory_mib = s.host_mib
        cfg.host.swap_mib = s.swap_mib
        cfg.host.swap_write_error_rate = s.swap_errors
        cfg.host.swap_read_error_rate = s.swap_errors
        cfg.host.numa_nodes = s.nodes
        cfg.host.thp = "always" if s.thp else "never"
        cfg.host.oom = "fail"  # the machine's rules need live tenants; OOM kills are tests/test_oom.py's
        cfg.guest.memory_mib = GUEST_MIB
        cfg.guest.vcpus = 2
        cfg.guest.vcpu_nodes = [0, s.nodes - 1]
        cfg.engine.accesses_per_tick = s.accesses_per_tick
        cfg.engine.check_accesses = s.check_accesses
        cfg.engine.race_window = s.race_window
        cfg.engine.timeseries = False
        cfg.workload.accesses = 10**9  # never runs out
        cfg.workload.boot_writes = s.boot_writes
        if s.secondary != "none":
            cfg.secondary.mode = s.mode
        if s.secondary in ("rdma", "gpu"):
            cfg.secondary.region_start_mib = s.region_start_mib
            cfg.secondary.region_mib = s.region_mib
        if s.secondary == "gpu":
            cfg.secondary.device_memory_mib = s.device_memory_mib
            cfg.secondary.migrate_hot_pages = 64 if s.device_memory_mib else 0
        cfg.guest.devices = [
            {
                "secondary": _secondary_settings(d.name, d.mode, d.region_start_mib, d.region_mib,
                                                 d.device_memory_mib),
                "workload": wl,
                "node": i % s.nodes,
                "accesses_per_tick": s.accesses_per_tick // 2,
            }
            for i, d in enumerate(s.devices)
        ]  # fmt: skip
        if s.process is not None:
            proc = {"name": "proc", "memory_mib": PROCESS_MIB, "node": s.nodes - 1, "workload": wl}
            if s.process == "kvm":
                proc["secondary"] = {"name": "kvm", "mode": s.process_mode}
            cfg.processes = [proc]
        cfg.policies.swap.mode = s.swap_mode
        cfg.policies.defrag.scan_sleep_ms = 1.0  # khugepaged scans on every tick
        cfg.policies.numa.scan_delay_ms = 0
        cfg.policies.numa.scan_period_min_ms = 0.01
        cfg.policies.numa.scan_size_mb = 1
        cfg.policies.eager_release.every_ticks = 3
        for name, on in (("defrag", s.defrag), ("numa", s.numa), ("eager_release", s.eager_release)):
            if not on:
                del cfg.policies[name]
    return Simulation(cfg)


# -- rule arguments --

PAGE = st.integers(0, GUEST_MIB * MIB - 1)
LENGTH = st.one_of(st.integers(1, 16), st.sampled_from([64, 255, 256, 511, 512, 513, 1024]))
WHICH = st.integers(0, 7)  # picks a live tenant, a client, ... modulo how many there are
ACCESS = st.sampled_from(["read", "write", "mixed"])


def _writes(kind: str, n: int) -> np.ndarray:
    if kind == "mixed":
        return np.arange(n) % 3 == 0
    return np.full(n, kind == "write")


def _pinning(sec) -> bool:
    return bool(sec.state[MODE] & SEC_PIN)


class MMNotifierMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim: Simulation | None = None

    # -- helpers --

    def _count(self) -> None:
        global STEPS
        STEPS += 1

    def _live(self) -> list:
        return [t for t in self.sim.tenants if not t.mm.exited]

    def _tenant(self, which: int):
        live = self._live()
        return live[which % len(live)]

    def _range(self, mm, start: int, length: int) -> tuple[int, int]:
        start %= mm.npages
        return start, min(start + length, mm.npages)

    def _devices(self, tenant) -> list:
        return [c for c in tenant.clients if c.secondary is not None]

    def _unregister(self, mm, start: np.ndarray, end: np.ndarray) -> None:
        """What a correct user of a pinning device does before unmapping memory it registered (ib_dereg_mr,
        deleting a KVM memslot): the device lets go of the range. A notifier-mode device needs nothing."""
        for sec in self.sim.secondaries_of(mm):
            if _pinning(sec):
                sec.zap(start, end)

    # -- setup --

    @initialize(setup=setups())
    def start(self, setup: Setup) -> None:
        self.sim = build(setup)

    # -- mm operations --

    @rule(which=WHICH, start=PAGE, length=LENGTH, kind=ACCESS)
    def cpu_access(self, which, start, length, kind):
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        pages = np.arange(lo, hi)
        self.sim.run_client(mm, None, pages, _writes(kind, pages.size))

    @rule(which=WHICH, start=PAGE, length=LENGTH, prot=st.sampled_from(["none", "r", "rw"]))
    def mmap(self, which, start, length, prot):
        """mmap the unmapped pages of a range (a munmap'd hole filled again)."""
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        unmapped = (mm.flags[lo:hi] & P_VMA) == 0
        edges = np.flatnonzero(np.diff(np.concatenate([[0], unmapped.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            mm.mmap(lo + int(a), lo + int(b), prot)

    @rule(which=WHICH, start=PAGE, length=LENGTH)
    def munmap(self, which, start, length):
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        self._unregister(mm, np.array([lo]), np.array([hi]))
        mm.munmap(lo, hi)

    @rule(which=WHICH, start=PAGE, length=LENGTH, prot=st.sampled_from(["none", "r", "rw", "rw"]))
    def mprotect(self, which, start, length, prot):
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        if ((mm.flags[lo:hi] & P_VMA) == 0).any():
            try:
                mm.mprotect(lo, hi, prot)
            except ValueError as exc:
                assert "covers unmapped pages" in str(exc)
            else:
                raise AssertionError(f"mprotect [{lo}, {hi}) over unmapped pages was accepted")
            return
        mm.mprotect(lo, hi, prot)

    @rule(which=WHICH, start=PAGE, length=LENGTH, stride=st.integers(1, 5))
    def mkclean(self, which, start, length, stride):
        """Writeback's write-protect (PROTECTION_PAGE per folio): the pages lose their dirty bit, and no
        subscribed secondary MMU keeps an entry for them."""
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        pages = np.arange(lo, hi, stride)
        mm.mkclean(pages)
        present = pages[(mm.pte[pages] >= 0) & ((mm.flags[pages] & P_DEVICE) == 0)]
        assert not (mm.flags[present] & P_DIRTY).any()
        for sec in mm.chain.subscribers():
            if getattr(sec, "spte", np.zeros(0)).size:
                assert not (sec.spte[present] >= 0).any(), f"{sec.label} kept an entry mkclean write-protected"

    @rule(which=WHICH)
    def clear_soft_dirty(self, which):
        """echo 4 > clear_refs (SOFT_DIRTY over the whole mm): every unpinned present page is clean after."""
        self._count()
        mm = self._tenant(which).mm
        mm.clear_soft_dirty()
        present = (mm.pte >= 0) & ((mm.flags & P_DEVICE) == 0)
        present[present] = self.sim.host.ft.pin[mm.pte[present]] == 0
        assert not (mm.flags[present] & P_DIRTY).any()

    @rule(which=WHICH, start=PAGE, length=LENGTH)
    def madvise_dontneed(self, which, start, length):
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        self._unregister(mm, np.array([lo]), np.array([hi]))
        mm.madvise_dontneed(lo, hi)

    @rule(which=WHICH, start=PAGE, length=LENGTH, stride=st.integers(1, 5))
    def discard(self, which, start, length, stride):
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        pages = np.arange(lo, hi, stride)
        self._unregister(mm, pages, pages + 1)
        mm.discard(pages)

    @precondition(lambda self: self.sim is not None and len(self._live()) > 1)
    @rule(which=WHICH)
    def exit(self, which):
        self._count()
        self._tenant(which).mm.exit()

    # -- secondary accesses --

    @rule(which=WHICH, client=WHICH, start=PAGE, length=LENGTH, kind=ACCESS)
    def device_access(self, which, client, start, length, kind):
        """A device's accesses, inside its region (a device reaches only the memory it registered)."""
        self._count()
        tenant = self._tenant(which)
        devices = self._devices(tenant)
        if not devices:
            return
        c = devices[client % len(devices)]
        lo, hi = c.region
        start = lo + start % (hi - lo)
        pages = np.arange(start, min(start + length, hi))
        self.sim.run_client(c.mm, c.secondary, pages, _writes(kind, pages.size))

    @rule(which=WHICH, client=WHICH, start=PAGE, length=LENGTH)
    def populate(self, which, client, start, length):
        self._count()
        devices = self._devices(self._tenant(which))
        if not devices:
            return
        c = devices[client % len(devices)]
        lo, hi = c.region
        start = lo + start % (hi - lo)
        c.secondary.populate(start, min(start + length, hi))

    @rule(ticks=st.integers(1, 3))
    def tick(self, ticks):
        self._count()
        for _ in range(ticks):
            self.sim.step()

    @rule(ms=st.sampled_from([1, 50, 1000]))
    def time_passes(self, ms):
        """Simulated time moves on (khugepaged's budget grows, NUMA scans come due), then one tick."""
        self._count()
        self.sim.time_ns += ms * 1e6
        self.sim.step()

    # -- policy actions --

    @rule(pages=st.sampled_from([1, 32, 200, 2000]), direct=st.booleans())
    def reclaim(self, pages, direct):
        self._count()
        self.sim._reclaim(pages, direct=direct)

    @rule(which=WHICH, start=PAGE, length=LENGTH)
    def swap_out_pages(self, which, start, length):
        """swap_out of a tenant's resident pages in host RAM (pinned and shared ones it must skip)."""
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        frames = mm.pte[lo:hi]
        frames = frames[(frames >= 0) & ((mm.flags[lo:hi] & P_DEVICE) == 0)].astype(np.int64)
        swap_out(self.sim, frames)

    @rule(which=WHICH, start=PAGE, length=LENGTH, node=st.integers(0, 1))
    def migrate(self, which, start, length, node):
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        self.sim.migrate(mm, np.arange(lo, hi), node % self.sim.host.nodes)

    @rule(node=st.integers(0, 1), blocks=st.integers(1, 8))
    def compact(self, node, blocks):
        self._count()
        compact(self.sim, node % self.sim.host.nodes, blocks)

    @rule(which=WHICH, region=st.integers(0, 3))
    def khugepaged_collapse(self, which, region):
        """collapse() of a region that qualifies as the defrag policy's khugepaged checks it."""
        self._count()
        mm = self._tenant(which).mm
        first = (region % (mm.npages // HUGE_PAGES)) * HUGE_PAGES
        pte, flags = mm.pte[first : first + HUGE_PAGES], mm.flags[first : first + HUGE_PAGES]
        present = pte >= 0
        if flags[0] & P_HUGE or ((flags & P_VMA_RW) != P_VMA_RW).any() or (pte < PTE_NONE).any():
            return
        if (flags & P_DEVICE).any():  # khugepaged skips device-private pages (and collapses into RAM only)
            return
        if not present.any() or self.sim.host.ft.pin[pte[present]].any():
            return
        node = self.sim.host.node_of(int(pte[present][0]))
        if self.sim.host.free_blocks(node):
            collapse(self.sim, mm, first, node)

    @rule(which=WHICH, start=PAGE, length=LENGTH)
    def thp_split(self, which, start, length):
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        split(self.sim, mm, np.arange(lo, hi))

    @rule(which=WHICH, start=PAGE, length=LENGTH, into=WHICH, twin=PAGE, change_pte=st.booleans())
    def ksm_merge(self, which, start, length, into, twin, change_pte):
        """KSM merges the pages of a range whose content equals a target page's (in any mm)."""
        self._count()
        mm = self._tenant(which).mm
        dst = self._tenant(into).mm
        twin %= dst.npages
        lo, hi = self._range(mm, start, length)
        pages = np.arange(lo, hi)
        pages = pages[mm.token[pages] == dst.token[twin]]
        merge_pages(self.sim, mm, pages, dst, np.full(pages.size, twin), change_pte=change_pte)

    @rule(which=WHICH, client=WHICH, pick=st.integers(0, 2**16))
    def ksm_break(self, which, client, pick):
        """A write to a shared page, by the CPU or one of the mm's devices: copy on write."""
        self._count()
        tenant = self._tenant(which)
        mm = tenant.mm
        shared = np.flatnonzero(is_shared(self.sim, mm, np.arange(mm.npages)))
        if not shared.size:
            return
        page = int(shared[pick % shared.size])
        users = [None, *(c for c in self._devices(tenant) if c.region[0] <= page < c.region[1])]
        user = users[client % len(users)]
        self.sim.run_client(mm, user.secondary if user else None, np.array([page]), np.array([True]))

    @precondition(lambda self: self.sim is not None and any(s.device_node >= 0 for s in self.sim.secondaries))
    @rule()
    def gpu_migrate_to_vram(self):
        """Every GPU with device memory moves the pages it used into it (its host_tick)."""
        self._count()
        for sec in self.sim.secondaries:
            if sec.name == "gpu" and sec.device_node >= 0 and not sec.mm.exited:
                sec.host_tick(self.sim)

    @precondition(lambda self: self.sim is not None and any(_pinning(s) for s in self.sim.secondaries))
    @rule(which=WHICH, start=PAGE, length=LENGTH)
    def pin_hole_is_reported(self, which, start, length):
        """munmap under a pinning device that was not told (the 2008 problem): the check reports each
        stale pinned entry as a coherence violation, and nothing else; then the device lets go."""
        self._count()
        mm = self._tenant(which).mm
        lo, hi = self._range(mm, start, length)
        pinning = [s for s in self.sim.secondaries_of(mm) if _pinning(s)]
        if not pinning:
            return
        mm.munmap(lo, hi)
        stale = sum(int(np.count_nonzero((s.spte >= 0) & (s.spte != mm.pte) & ((s.sflags & S_PINNED) != 0)))
                    for s in pinning)  # fmt: skip
        report = invariants.check(self.sim)  # not sim.check_invariants: this hole is expected, not counted
        expected = np.zeros_like(report.counts)
        expected[invariants.KINDS.index("coherence")] = stale
        assert np.array_equal(report.counts, expected), (stale, report.messages)
        for s in pinning:
            stale_pages = np.flatnonzero((s.spte >= 0) & (s.spte != mm.pte))
            assert (self.sim.host.ft.key[s.spte[stale_pages]] == ORPHAN).all()
            s.zap(stale_pages, stale_pages + 1)

    # -- the invariants --

    @invariant()
    def invariants_hold(self):
        if self.sim is None:
            return
        sim = self.sim
        report = sim.check_invariants()
        assert not report, report.messages
        assert not sim.violations.any(), sim.violation_messages  # including any reported outside the check
        counted = sim.counter("coherence_violations") + sim.counter("isolation_violations")
        assert counted == 0, f"{counted} accesses through bad secondary entries (engine.check_accesses)"

    @invariant()
    def structure_holds(self):
        if self.sim is None:
            return
        sim = self.sim
        host = sim.host
        device_nodes = set(host.device_nodes)
        for mm in sim.mms:
            pte, flags = mm.pte, mm.flags
            present = np.flatnonzero(pte >= 0)
            nodes = host.ft.pb[pte[present] >> PAGEBLOCK_SHIFT, PB_NODE]
            on_device = np.isin(nodes, list(device_nodes))
            flagged = (flags[present] & P_DEVICE) != 0
            bad = present[on_device != flagged]
            assert not bad.size, (
                f"{mm.name}: page {bad[0]} is flagged P_DEVICE={bool(flags[bad[0]] & P_DEVICE)} but its frame "
                f"{pte[bad[0]]} is on node {host.node_of(int(pte[bad[0]]))} (device nodes: {sorted(device_nodes)})"
            )
            huge = (flags & P_HUGE) != 0
            for first in range(0, mm.npages - mm.npages % HUGE_PAGES, HUGE_PAGES):
                region = huge[first : first + HUGE_PAGES]
                if not region.any():
                    continue
                frames = pte[first : first + HUGE_PAGES].astype(np.int64)
                assert region.all(), f"{mm.name}: THP at page {first} only partly flagged huge"
                assert frames[0] % HUGE_PAGES == 0 and np.array_equal(frames, frames[0] + np.arange(HUGE_PAGES)), (
                    f"{mm.name}: THP at page {first} is not one pageblock in order"
                )
            if mm.exited:
                assert (pte == PTE_NONE).all() and not flags.any(), f"{mm.name} exited but keeps pages"
        for sec in sim.secondaries:
            mapped = np.flatnonzero(sec.spte >= 0)
            lo, hi = sec.region
            assert ((mapped >= lo) & (mapped < hi)).all(), f"{sec.label} maps pages outside its region"
            if sec.mm.exited:
                assert not mapped.size, f"{sec.label} keeps entries after its mm exited"
            frames = sec.spte[mapped]
            others = [n for n in device_nodes if n != sec.device_node]
            foreign = np.isin(host.ft.pb[frames >> PAGEBLOCK_SHIFT, PB_NODE], others)
            assert not foreign.any(), f"{sec.label} maps another device's private memory at page {mapped[foreign][0]}"
            if sec not in sec.mm.chain.subscribers():
                continue  # a pinning device is not told about protection changes (nor anything else)
            pflags = sec.mm.flags[mapped]
            unreadable = mapped[((pflags & (P_VMA | P_READ)) != (P_VMA | P_READ)) | ((pflags & P_PROTNONE) != 0)]
            assert not unreadable.size, f"{sec.label} keeps an entry for page {unreadable[0]}, which it may not read"
            writable = (sec.sflags[mapped] & S_WRITABLE) != 0
            readonly = mapped[writable & ((pflags & P_WRITE) == 0)]
            assert not readonly.size, f"{sec.label} may write page {readonly[0]}, which is read-only"


def test_random_operation_sequences_keep_every_invariant():
    global STEPS
    STEPS = 0
    test = get_state_machine_test(
        MMNotifierMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            derandomize=not SEED,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            print_blob=False,
        ),
    )
    if SEED:
        chosen = int.from_bytes(os.urandom(4)) if SEED == "random" else int(SEED)
        print(f"MMNSIM_STATEFUL_SEED={chosen}")
        test = seed(chosen)(test)
    test()
    print(f"{STEPS} steps generated")
    assert min(MIN_STEPS, EXAMPLES * STEPS_PER_EXAMPLE // 2) <= STEPS, f"only {STEPS} steps ran"


# -- framework bugs the machine above found (A to G), each fixed; kept as regression tests --


def _tiny(*overrides: str) -> Simulation:
    return Simulation(config("guest.memory_mib=4", "host.memory_mib=8", "host.swap_mib=16", "workload.accesses=0",
                             "workload.boot=false", *overrides))  # fmt: skip


def test_fixed_bug_A_two_devices_of_one_kind_on_one_mm():
    """Two NICs (or two GPUs) on one mm: Simulation() registers both as "secondary:rdma[guest0]" and pluggy
    refuses the second (the notifier chain de-duplicates labels; Simulation.__init__ does not)."""
    sim = _tiny("secondary=rdma", "guest.devices=[{secondary: {name: rdma}, workload: {name: uniform}}]")
    assert len(sim.secondaries) == 2


def test_fixed_bug_B_pin_check_with_device_memory(monkeypatch):
    """A pinning device and device memory on one host: ``invariants.check`` sizes ``expected_pins`` by
    ``host.nframes`` (RAM) but ``_check_host`` walks every frame, device memory included, and reads past
    the array (numba does no bounds checks): garbage pin counts, reported as pin violations of free VRAM
    frames (seen: "frame 2050 has pin count 0 and key -1, but no secondary entry account for its pins").
    Checked here by the array's size, deterministically, without the out-of-bounds read."""
    sizes = []
    original = invariants._check_host

    def check_host(pt, ft, sw, expected_pins, *rest):
        sizes.append((expected_pins.size, ft.key.size))
        if 0 < expected_pins.size < ft.key.size:  # what the check would read: pad it
            expected_pins = np.concatenate([expected_pins, np.zeros(ft.key.size - expected_pins.size, np.int32)])
        original(pt, ft, sw, expected_pins, *rest)

    monkeypatch.setattr(invariants, "_check_host", check_host)
    sim = _tiny("secondary=gpu", "secondary.mode=pin", "secondary.device_memory_mib=1")
    assert not invariants.check(sim)
    (pins, frames), *_ = sizes
    assert pins == frames, f"expected_pins has {pins} entries for {frames} frames"


def test_fixed_bug_C_reclaim_while_a_device_registers():
    """A userptr GPU pinning its region at attach on a host that must reclaim for it: the swap policy
    charges its work with ``sim.charge``, but ``Simulation.__init__`` sets ``host_cpu_ns`` (and ``tick``,
    ``time_ns``, ...) only after attaching the secondaries: AttributeError. (The THP fault of the region's
    first page also allocated the pages before it: reclaim scans them, and charges the scan. The THP is one
    folio, pinned as a whole: folio_maybe_dma_pinned, so reclaim takes none of it.)"""
    sim = Simulation(config("guest.memory_mib=4", "host.memory_mib=4", "host.swap_mib=16", "host.thp=always",
                            "secondary=gpu", "secondary.mode=pin", "secondary.region_start_mib=1"))  # fmt: skip
    assert sim.counter("pgscan") > 0 and sim.counter("pin_skipped") > 0  # reclaim ran, and charged its scan


def test_fixed_bug_D_khugepaged_collapses_device_private_pages():
    """khugepaged (``plugins/defrag.py``, and ``thp.collapse``) collapses a 2 MiB region holding pages that
    live in a GPU's device memory: their content is copied into the new RAM pageblock and the VRAM frames
    freed, but the pages keep ``P_DEVICE``. The next CPU access asks for a migration back to RAM whose
    owner (the device whose node holds the frame) does not exist: StopIteration in
    ``Simulation._migrate_to_ram``. (The kernel's khugepaged skips device-private entries.)"""
    sim = _tiny("secondary=gpu", "secondary.device_memory_mib=1", "secondary.migrate_hot_pages=64",
                "policies=[swap,defrag]", "policies.defrag.scan_sleep_ms=1")  # fmt: skip
    mm, gpu = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, None, np.arange(0, 8), np.ones(8, bool))  # the CPU writes pages 0..7
    sim.run_client(mm, gpu, np.arange(8, 16), np.ones(8, bool))  # the GPU writes pages 8..15
    gpu.host_tick(sim)  # and moves them into its memory
    assert (mm.flags[8:16] & P_DEVICE).all()
    sim.time_ns += 1e9
    sim.step()  # khugepaged scans pages 0..511, and skips them: some live in device memory
    assert sim.counter("thp_collapse_alloc") == 0 and (mm.flags[8:16] & P_DEVICE).all()
    sim.run_client(mm, None, np.array([8]))  # the CPU reads page 8: the GPU migrates it back to RAM
    assert not mm.flags[8] & P_DEVICE and not sim.check_invariants()


def test_fixed_bug_E_swap_keeps_numa_prot_none():
    """A page NUMA balancing marked PROT_NONE, then swapped out, comes back from swap still PROT_NONE
    (``swapdev._UNMAP_CLEAR`` keeps P_PROTNONE, and a swap-in keeps the flags), so a secondary MMU's
    fault maps it without the hinting fault KVM honours: KVM maps a PROT_NONE page. (The kernel's swap
    entry carries no protnone bit; do_swap_page builds a normal PTE.)"""
    sim = _tiny("secondary=kvm", "host.numa_nodes=2", "policies=[swap,numa]", "policies.numa.scan_delay_ms=0")
    mm, kvm = sim.mms[0], sim.secondaries[0]
    pages = np.arange(16)
    sim.run_client(mm, kvm, pages, np.ones(16, bool))
    sim.step()  # the NUMA scan marks the window PROT_NONE; KVM zaps it
    assert (mm.flags[pages] & P_PROTNONE).all() and (kvm.spte[pages] < 0).all()
    swap_out(sim, mm.pte[pages].astype(np.int64))
    sim.run_client(mm, kvm, pages)  # the guest touches them again: swapped in through KVM
    assert not (mm.flags[pages[kvm.spte[pages] >= 0]] & P_PROTNONE).any()


def test_fixed_bug_F_dontneed_of_a_device_private_page():
    """MADV_DONTNEED (or ``discard``) of a page living in a GPU's device memory frees the VRAM frame but
    keeps ``P_DEVICE`` on the page (``mm._PTE_BITS`` lacks it). The next fault allocates a RAM frame and
    the page, still flagged device-private, sends the CPU to ``_migrate_to_ram`` with no owner: StopIteration."""
    sim = _tiny("secondary=gpu", "secondary.device_memory_mib=1", "secondary.migrate_hot_pages=64")
    mm, gpu = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, gpu, np.arange(8), np.ones(8, bool))
    gpu.host_tick(sim)  # the pages move into device memory
    mm.madvise_dontneed(0, 8)
    sim.run_client(mm, None, np.array([0]))  # the CPU reads page 0: a zero-filled page in RAM
    assert not mm.flags[0] & P_DEVICE


def test_fixed_bug_G_young_check_with_a_frame_twice_in_one_scan():
    """The swap policy's scan (``scan_frames``, up to ``passes`` = 2 sweeps a call) returns a frame twice in
    one batch when the batch wraps around memory (a small host, or few unpinned frames in use). ``referenced``
    then asks ``clear_flush_young`` about the same page twice in one call; KVM test-and-clears, so it answers
    young, then (correctly) old; ``NotifierChain.young``'s check compares both answers with the accessed bits
    read before the call and reports an ``accessed`` violation: "kvm[guest0] answered clear_flush_young not
    young for 32 ranges it accessed"."""
    sim = Simulation(config("guest.memory_mib=4", "host.memory_mib=4", "host.swap_mib=16",
                            "engine.accesses_per_tick=32", "workload=uniform"))  # fmt: skip
    sim.step()  # the boot pass maps 32 pages through KVM
    sim._reclaim(1, direct=False)  # kswapd asks for one page: the batch of 512 holds each of the 32 frames twice
    assert not sim.violations.any(), sim.violation_messages


def test_fixed_bug_H_self_invalidation_reuses_a_later_sequence_number():
    """Found by the random run once faults could sleep in race windows: ``SecondaryMMU.invalidate_self``
    (eager release) gave an interval subscriber ``state[SEQ] + 1`` as ``cur_seq``, which the mm's next
    invalidation then handed it again. A fault that began between the two kept a sequence snapshot equal
    to the new ``cur_seq``, did not retry, and installed the frame kswapd had just reclaimed (coherence)."""
    from mmnsim import Event, single_pages
    from mmnsim.secondary import SEQ

    sim = _tiny("secondary=rdma")
    mm, rdma = sim.mms[0], sim.secondaries[0]
    rdma.invalidate_self(single_pages(mm, np.array([0]), Event.CLEAR))
    snapshot = int(rdma.state[SEQ])  # what a fault beginning now reads
    mm.madvise_dontneed(5, 6)  # an invalidation of the mm, while that fault sleeps
    assert int(rdma.state[SEQ]) != snapshot, "the fault in flight would not retry"
