"""``mmnsim-calibrate``: this machine's costs, measured with the real twin, written as a cost profile.

    sudo mmnsim-calibrate pvm-shadow              # writes conf/costs/pvm-shadow.yaml: select it with costs=pvm-shadow
    sudo mmnsim-calibrate mybox --repeats 7 --output /tmp/mybox.yaml

Each cost is measured on the kernel itself, with the twin's KVM guest and plain process (``mmnsim.real.guest``),
its memory cgroup and swap file (``mmnsim.real.cleanup.RunResources``: removed on every exit path):

- ``costs.minor_fault_ns``: a plain process's first touch of a 4 KiB page, less its touch of a resident page.
- ``secondary.fault_ns``: a KVM fault alone: the guest touches pages whose host pages are present and whose
  sptes an mprotect round trip zapped, one page in each 8-page group (so the shadow MMU's prefetch finds no
  neighbour to map: one spte per fault), less the touch of a mapped page.
- ``secondary.zap_page_ns``: mprotect(PROT_NONE) of guest pages whose sptes are present, less the same call
  once they are gone, per page.
- ``secondary.remote_flush_ns``: mprotect(PROT_NONE) of one guest page whose spte is present (a zap and
  kvm_flush_remote_tlbs), less the same call with no spte (no flush); the vCPUs are outside the guest, so it
  is the requester's side.
- ``costs.swap_out_ns``, ``costs.swap_in_ns``: a plain process in a memory cgroup of half its size with a swap
  file: touching new pages past the limit (each a swap-out of another page), then touching swapped-out pages
  in random order (each a major fault and a swap-out).
- ``secondary.guest_mode_ns``: how long a faulting vCPU counts as in guest mode for a TLB-flush request, per
  exit: one vCPU faults while a thread of this process pages out other guest pages one at a time
  (process_madvise MADV_PAGEOUT, each a KVM zap and a flush request); the share of the requests that kicked it
  (KVM's remote_tlb_flush over remote_tlb_flush_requests) times its run time, over its exits.
- ``secondary.flush_ipi_ns``: what a vCPU in guest mode loses to a flush request that kicks it: one vCPU
  replays resident guest pages (no fault) while a thread of this process pages out other guest pages one at a
  time, in three conditions a repeat: none paged out; pages the host populated and KVM never mapped (the same
  host work and the same host TLB-shootdown interrupts, no spte: no flush request); pages KVM maps (a zap and
  a flush request each). The second gives the vCPU's time per interrupt exit (KVM's irq_exits); the third's
  time, less its exits that were not kicks at that rate, per kick (KVM's remote_tlb_flush).
- ``costs.access_ns``: a replay of uniformly random accesses (30 % writes) over a guest of 2 MiB pages on host
  THPs (2 MiB sptes), every page resident.
- ``costs.walk_ref_ns``: fitted: the 4K/4K replay's time per access less 2M/2M's in the same round (the four
  page-size guests replay in turn), its median over the rounds, divided by the model's extra walk references
  (shadow paging, ``mmnsim.costs.translation_ns``).
- ``costs.tlb_entries``: /proc/cpuinfo ``TLB size`` (AMD), when present.
- ``secondary.paging``: the machine's (``machineinfo.kvm_paging``): not a cost, but the model's walk follows it.

Also measured and printed, not profile keys: the guest's first touch and its refault after MADV_DONTNEED
(host and KVM fault together), MADV_DONTNEED per page in the guest and in a plain process, a KVM fault with
the shadow MMU's prefetch (per fault, with its sptes per fault), and the replay's time per access in the
four combinations of guest and host page size (4K/4K, 4K/2M, 2M/4K, 2M/2M) beside the model's translation
cost (the splintering table of docs/time.md).

**Load.** The machine is shared: other work can only add time to a measurement, never remove it, so each
cost is a low statistic of its repeats (each repeat already an average over many pages, or for the flush,
the smallest of many single calls): their **lower quartile** (``QUANTILE``), not the minimum, which one
anomalous repeat can set; the profile records the minimum, median and maximum beside it. Keys the profile
does not measure are the default profile's (``conf/costs/default.yaml`` through Hydra's defaults list); the
file lists them. The profile sets KVM's costs too (``secondary.*``), so it is for ``secondary=kvm`` (and
``faulty``, or ``none``): ``load_settings`` refuses it with another secondary (its ``sources.profile``).
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..config import ConfigError
from . import cleanup, counters, hostmem, machineinfo, preflight
from .guest import Guest, Process

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PAGE = 4096
# The profile sets KVM's costs (secondary.*) too: the secondaries it may be used with (faulty is KVM with a bug;
# none has no costs of its own). mmnsim.settings refuses it with any other.
SECONDARIES = ["kvm", "faulty", "none"]
# The statistic of a figure's repeats: their lower quartile (one of them: the second smallest of 7). Load on the
# shared machine only adds time, so a low statistic; not the minimum, because a single repeat can come out far
# below the others here (a KVM fault repeat measured 8 us against 24-32 us in four: this machine is itself a
# guest, and its own hypervisor's state varies between repeats).
QUANTILE = 0.25
ZAP_PAIRS = 3  # mprotect calls with and without sptes per repeat of the zap measurement
PREFETCH = 8  # the shadow MMU maps up to 8 neighbouring sptes per fault (PTE_PREFETCH_NUM, arch/x86/kvm/mmu/mmu.c)


@dataclass
class Plan:
    """How much to measure: ``repeats`` of each measurement over ``pages`` 4 KiB pages, ``flushes`` single-page
    flush pairs per repeat, a swap test of ``swap_mib`` in a cgroup of half that, and the page-size replays
    over a guest of ``access_mib`` MiB with ``accesses`` accesses each."""

    repeats: int = 7
    pages: int = 4096
    flushes: int = 20
    swap_mib: int = 64
    access_mib: int = 256
    accesses: int = 4_000_000

    def check(self) -> None:
        for name, low in (("repeats", 1), ("pages", 64), ("flushes", 1), ("swap_mib", 8), ("access_mib", 8),
                          ("accesses", 1024)):  # fmt: skip
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if self.pages % PREFETCH:
            raise ConfigError(f"--pages must be a multiple of {PREFETCH}, got {self.pages}")
        if self.access_mib % 2 or self.swap_mib % 2:
            raise ConfigError("--access-mib and --swap-mib must be even (whole 2 MiB pages)")


@dataclass
class Measured:
    """One figure: its samples in ns (one per repeat), their lower quartile taken as the value (``QUANTILE``)."""

    name: str
    samples: list[float]
    what: str
    key: str | None = None  # the profile key it sets, if any
    extra: dict = field(default_factory=dict)
    quantile: float = QUANTILE  # the statistic of the samples taken as the value

    @property
    def value(self) -> float:
        return float(np.quantile(self.samples, self.quantile, method="lower"))

    @property
    def low(self) -> float:
        return float(min(self.samples))

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def high(self) -> float:
        return float(max(self.samples))


def _touch(tenant: Guest, pages: np.ndarray, write: bool = True) -> float:
    """Seconds the tenant took to touch ``pages`` once each (one 8-byte store or load per page)."""
    return tenant.run(pages.astype(np.int32), np.full(pages.size, write))


def _stat(guest: Guest, name: str) -> int:
    return guest.stats()[name]


# --- the measurements ------------------------------------------------------------------------------------


def host_faults(plan: Plan, progress) -> list[Measured]:
    """A plain process: first touch of fresh pages, the touch of resident pages, MADV_DONTNEED per page."""
    first, dontneed = [], []
    with Process(plan.repeats * plan.pages // 256 + 2) as proc:
        proc.madvise("nohugepage")
        for r in range(plan.repeats):
            pages = np.arange(r * plan.pages, (r + 1) * plan.pages)
            fault = _touch(proc, pages)
            hit = _touch(proc, pages)
            first.append((fault - hit) / plan.pages * 1e9)
            dontneed.append(proc.timed("madvise", "dontneed", r * plan.pages, plan.pages) / plan.pages * 1e9)
            progress(f"host fault {r + 1}/{plan.repeats}: {first[-1]:,.0f} ns")
    return [
        Measured(
            "host_minor_fault",
            first,
            "plain process: first touch of a 4 KiB page less a resident touch",
            key="costs.minor_fault_ns",
        ),  # fmt: skip
        Measured("host_dontneed_page", dontneed, "plain process: MADV_DONTNEED of resident pages, per page"),
    ]


def kvm_faults(plan: Plan, progress) -> list[Measured]:
    """A 4 KiB guest on 4 KiB host pages: first touch, the zap per spte, a KVM fault with and without prefetch,
    MADV_DONTNEED and the refault after it, and the single-page zap with its remote flush."""
    n, out = plan.pages, {k: [] for k in ("first", "zap", "prefetch", "sptes", "dontneed", "refault", "fault", "flush")}
    sparse_count = n // PREFETCH
    with Guest(plan.repeats * n // 256 + 2, vcpus=1) as guest:
        guest.madvise("nohugepage")
        for r in range(plan.repeats):
            base = r * n
            pages = np.arange(base, base + n)
            sparse = pages[::PREFETCH]  # one page in each 8-page group
            fault = _touch(guest, pages)
            hit = _touch(guest, pages) / n
            out["first"].append((fault / n - hit) * 1e9)
            mapped, unmapped = [], []
            for _ in range(ZAP_PAIRS):  # the smallest of a few calls each: one call is a millisecond, often preempted
                _touch(guest, pages)
                mapped.append(guest.timed("mprotect", "none", base, n))
                guest.mprotect("rw", base, n)
                unmapped.append(guest.timed("mprotect", "none", base, n))
                guest.mprotect("rw", base, n)
            out["zap"].append((min(mapped) - min(unmapped)) / n * 1e9)
            before = _stat(guest, "pf_fixed")
            refault = _touch(guest, pages)
            faults = _stat(guest, "pf_fixed") - before
            out["prefetch"].append((refault - hit * n) / max(faults, 1) * 1e9)
            out["sptes"].append(n / max(faults, 1))
            out["dontneed"].append(guest.timed("madvise", "dontneed", base, n) / n * 1e9)
            refault = _touch(guest, sparse)  # host and KVM fault; the neighbours are absent: one spte each
            hit_sparse = _touch(guest, sparse)
            out["refault"].append((refault - hit_sparse) / sparse_count * 1e9)
            guest.mprotect("none", base, n)
            guest.mprotect("rw", base, n)
            before = _stat(guest, "pf_fixed")
            kvm_only = _touch(guest, sparse)
            faults = _stat(guest, "pf_fixed") - before
            if faults != sparse_count:
                raise RuntimeError(f"a KVM refault of {sparse_count} pages took {faults} faults, not one each: "
                                   "the measurement of secondary.fault_ns assumes no prefetch")  # fmt: skip
            out["fault"].append((kvm_only - _touch(guest, sparse)) / sparse_count * 1e9)
            with_spte, without = [], []
            page = base + 1
            for _ in range(plan.flushes):
                _touch(guest, np.array([page]))
                with_spte.append(guest.timed("mprotect", "none", page, 1))
                guest.mprotect("rw", page, 1)
                without.append(guest.timed("mprotect", "none", page, 1))
                guest.mprotect("rw", page, 1)
            out["flush"].append((min(with_spte) - min(without)) * 1e9)
            progress(f"KVM faults {r + 1}/{plan.repeats}: fault {out['fault'][-1]:,.0f} ns, first touch "
                     f"{out['first'][-1]:,.0f} ns, flush {out['flush'][-1]:,.0f} ns")  # fmt: skip
    return [
        Measured(
            "guest_first_touch",
            out["first"],
            "guest first touch of a 4 KiB page (host fault through GUP, "
            "KVM fault, new shadow page tables) less a mapped touch",
        ),  # fmt: skip
        Measured(
            "kvm_fault",
            out["fault"],
            "KVM fault alone (host page present), one spte per fault, less a mapped touch",
            key="secondary.fault_ns",
        ),  # fmt: skip
        Measured(
            "kvm_fault_prefetch",
            out["prefetch"],
            "KVM fault alone with the shadow MMU's prefetch, per fault",
            extra={"sptes_per_fault": float(np.median(out["sptes"]))},
        ),  # fmt: skip
        Measured(
            "kvm_zap_page",
            out["zap"],
            "mprotect(PROT_NONE) of mapped guest pages less the same with no spte, per page",
            key="secondary.zap_page_ns",
        ),  # fmt: skip
        Measured(
            "kvm_remote_flush",
            out["flush"],
            f"mprotect(PROT_NONE) of one mapped guest page less the same "
            f"with no spte (zap and kvm_flush_remote_tlbs, vCPUs outside the guest), smallest of "
            f"{plan.flushes} calls each",
            key="secondary.remote_flush_ns",
        ),  # fmt: skip
        Measured(
            "guest_dontneed_page",
            out["dontneed"],
            "guest: MADV_DONTNEED of mapped pages (host zap, KVM zap, one flush), per page",
        ),  # fmt: skip
        Measured(
            "guest_refault",
            out["refault"],
            "guest refault after MADV_DONTNEED (host fault and KVM fault, one spte each) less a mapped touch",
        ),  # fmt: skip
    ]


def _guest_mode_pages(plan: Plan) -> tuple[int, int]:
    """``guest_mode``'s pages: those paged out under the loop (enough for a few hundred flush requests a repeat
    however small the plan), and the loop's, one fault in 8 (no prefetch)."""
    return max(plan.pages * 8, 16384), max(plan.pages * 16, 32768)


def swap_bytes(plan: Plan) -> int:
    """The run's swap file: ``swap``'s process (twice its size) and every page ``guest_mode`` or ``flush_kick``
    may page out (one after the other: each guest's swap is freed with it)."""
    return (2 * plan.swap_mib << 20) + sum(_guest_mode_pages(plan)) * PAGE


def guest_mode(plan: Plan, progress) -> list[Measured]:
    """How long a faulting vCPU counts as in guest mode for a TLB-flush request, per exit. One vCPU faults (KVM
    faults alone on present host pages; then faults that swap in too) while a thread of this process pages out
    other guest pages one at a time (process_madvise MADV_PAGEOUT: a KVM zap and a flush request each). KVM
    kicks a vCPU whose mode is not OUTSIDE_GUEST_MODE (virt/kvm/kvm_main.c kvm_request_needs_ipi) and counts
    the requests that kicked one (remote_tlb_flush) among all (remote_tlb_flush_requests): their share, times
    the vCPU's run time, over its exits. Needs the run's swap file on (``swap_bytes``)."""
    victims, loop = _guest_mode_pages(plan)
    per_exit, shares = [], []
    with Guest((victims + loop) // 256 + 2, vcpus=1) as guest, hostmem.OtherProcess(guest.pid) as other:
        guest.madvise("nohugepage")
        everything = np.arange(victims + loop)
        _touch(guest, everything)
        sparse = np.arange(victims, victims + loop, PREFETCH)
        next_victim = [0]
        for r in range(plan.repeats):
            if next_victim[0]:  # swapped in and mapped again: a victim without an spte pages out with no flush
                _touch(guest, np.arange(next_victim[0]))
                next_victim[0] = 0
            swapping = r % 2 == 1  # alternately: KVM faults alone, and faults that swap in
            if swapping:
                for page in sparse:
                    other.madvise(guest.ram_range[0] + int(page) * PAGE, PAGE, "pageout")
            else:
                guest.mprotect("none", victims, loop)
                guest.mprotect("rw", victims, loop)
            stop = threading.Event()

            def page_out(stop: threading.Event = stop) -> None:
                while not stop.is_set() and next_victim[0] < victims:
                    other.madvise(guest.ram_range[0] + next_victim[0] * PAGE, PAGE, "pageout")
                    next_victim[0] += 1

            vm, vcpu = guest.kvm_stats()
            before = (vm["remote_tlb_flush"].value, vm["remote_tlb_flush_requests"].value, vcpu[0]["exits"].value)
            thread = threading.Thread(target=page_out)
            thread.start()
            try:
                seconds = _touch(guest, sparse)
            finally:
                stop.set()
                thread.join()
            vm, vcpu = guest.kvm_stats()
            kicked = vm["remote_tlb_flush"].value - before[0]
            requests = vm["remote_tlb_flush_requests"].value - before[1]
            exits = vcpu[0]["exits"].value - before[2]
            if requests < 100 or exits < sparse.size:
                raise RuntimeError(f"the guest-mode loop made {requests} flush requests and {exits} exits for "
                                   f"{sparse.size} faults: too few to measure (is swap on?)")  # fmt: skip
            shares.append(kicked / requests)
            per_exit.append(kicked / requests * seconds / exits * 1e9)
            progress(f"guest mode {r + 1}/{plan.repeats}: {per_exit[-1]:,.0f} ns an exit ({kicked} of {requests} "
                     f"requests kicked the vCPU{', swap-ins' if swapping else ''})")  # fmt: skip
    return [
        Measured(
            "guest_mode_per_exit",
            per_exit,
            "one vCPU faulting (KVM faults alone, and with swap-ins, alternately) while another thread pages out "
            "other guest pages one at a time (process_madvise MADV_PAGEOUT: a KVM zap and a flush request each); "
            "the share of flush requests that found the vCPU in guest mode (KVM's remote_tlb_flush over "
            "remote_tlb_flush_requests) times the vCPU's run time, per exit (KVM's exits)",
            key="secondary.guest_mode_ns",
            extra={"share_low": min(shares), "share_high": max(shares)},
        ),  # fmt: skip
    ]


def flush_kick(plan: Plan, progress) -> list[Measured]:
    """What a vCPU in guest mode loses to one flush request that kicks it (``secondary.flush_ipi_ns``): the IPI,
    its exit, the flush on re-entry (KVM_REQ_TLB_FLUSH, kvm_vcpu_flush_tlb_all) and the TLB refills after.
    One vCPU replays resident guest pages (no fault) while a thread of this process pages out guest pages one
    at a time (process_madvise MADV_PAGEOUT), in three conditions each repeat: (1) none; (2) pages the host
    populated and KVM never mapped (MADV_POPULATE_WRITE): the same host work, and the same host TLB-shootdown
    interrupts to the vCPU's CPU (the vCPU thread runs in the process's mm), but no spte, so no flush request;
    (3) pages KVM maps: a zap and a flush request each, which kicks the vCPU in guest mode. (2) gives the
    vCPU's time per interrupt exit (KVM's irq_exits); (3)'s time, less its exits that were not kicks at that
    rate, over its kicks (KVM's remote_tlb_flush), is the figure. Needs the run's swap file (``swap_bytes``)."""
    victims, loop = _guest_mode_pages(plan)
    accesses = max(4 * plan.accesses, 1 << 23)  # thousands of kicks a repeat
    per_kick, per_exit = [], []
    with Guest((victims + loop) // 256 + 2, vcpus=1) as guest, hostmem.OtherProcess(guest.pid) as other:
        guest.madvise("nohugepage")
        _touch(guest, np.arange(victims + loop))
        replay = victims + np.random.default_rng(0).integers(0, loop, accesses)

        def replay_under(pageouts: bool) -> tuple[float, int, int]:
            """The replay's seconds, and the vCPU's kicks and interrupt exits meanwhile."""
            stop, done = threading.Event(), [0]

            def page_out() -> None:
                while pageouts and not stop.is_set() and done[0] < victims:
                    other.madvise(guest.ram_range[0] + done[0] * PAGE, PAGE, "pageout")
                    done[0] += 1

            vm, vcpu = guest.kvm_stats()
            before = vm["remote_tlb_flush"].value, vcpu[0]["irq_exits"].value
            thread = threading.Thread(target=page_out)
            thread.start()
            try:
                seconds = _touch(guest, replay, write=False)
            finally:
                stop.set()
                thread.join()
            vm, vcpu = guest.kvm_stats()
            return seconds, vm["remote_tlb_flush"].value - before[0], vcpu[0]["irq_exits"].value - before[1]

        for r in range(plan.repeats):
            idle, _, _ = replay_under(False)
            guest.madvise("dontneed", 0, victims)  # (2): host pages, no spte
            guest.madvise("populate_write", 0, victims)
            quiet, _, exits = replay_under(True)
            _touch(guest, np.arange(victims))  # (3): the guest maps them again
            kicked, kicks, kick_exits = replay_under(True)
            if kicks < 100 or exits < 100:
                raise RuntimeError(f"the flush-kick loop had {kicks} kicks and {exits} interrupt exits: too few to "
                                   "measure (is swap on?)")  # fmt: skip
            per_exit.append((quiet - idle) / exits * 1e9)
            per_kick.append((kicked - idle - per_exit[-1] * 1e-9 * (kick_exits - kicks)) / kicks * 1e9)
            progress(f"flush kick {r + 1}/{plan.repeats}: {per_kick[-1]:,.0f} ns a kick ({kicks} kicks, "
                     f"{kick_exits} interrupt exits; {per_exit[-1]:,.0f} ns an exit without a kick)")  # fmt: skip
    found = Measured(
        "flush_kick",
        per_kick,
        "one vCPU replaying resident guest pages while another thread pages out guest pages one at a time: the "
        "replay's extra time when each pageout zaps an spte and requests a flush, less its interrupt exits that "
        "were not kicks (timed when the pages paged out had no spte), per kick (KVM's remote_tlb_flush)",
        key="secondary.flush_ipi_ns",
        extra={"exit_ns_median": float(np.median(per_exit))},
        quantile=0.5,  # a difference of runs: load adds time to both sides, so no low statistic is the truer
    )  # fmt: skip
    if found.value <= 0:
        raise RuntimeError(f"the flush kick came out at {found.value:,.0f} ns: lost in the machine's noise "
                           "(run again on a quieter machine, or with more --accesses)")  # fmt: skip
    return [found]


def swap(plan: Plan, run: cleanup.RunResources, progress) -> list[Measured]:
    """A plain process of ``swap_mib`` in a memory cgroup of half its size, with the run's swap file on."""
    pages = (plan.swap_mib << 20) // PAGE
    limit_bytes = (plan.swap_mib << 20) // 2
    fits = pages * 3 // 8  # touched before the limit is reached (the group also holds page tables)
    out: dict[str, list[float]] = {"out": [], "in": [], "minor": [], "major": []}
    rng = np.random.default_rng(0)
    group = run.cgroup(limit_bytes, 2 * plan.swap_mib << 20)  # each repeat's process joins it in turn
    for r in range(plan.repeats):
        with Process(plan.swap_mib, before_ram=group.add_process) as proc:
            run.child(proc.pid)
            proc.madvise("nohugepage")
            first = np.arange(fits)
            rest = np.arange(fits, pages)
            minor = _touch(proc, first) - _touch(proc, first)
            vm = counters.read_vmstat()
            new = _touch(proc, rest)
            out_b = counters.read_vmstat()["pswpout"] - vm["pswpout"]
            minor_ns = minor / fits
            swap_out = (new - minor_ns * rest.size) / max(out_b, 1)
            stat = group.stat()
            vm = counters.read_vmstat()
            back = _touch(proc, rng.permutation(first))
            outs = counters.read_vmstat()["pswpout"] - vm["pswpout"]
            majors = group.stat()["pgmajfault"] - stat["pgmajfault"]
            swap_in = (back - outs * swap_out) / max(majors, 1)
            out["out"].append(swap_out * 1e9)
            out["in"].append(swap_in * 1e9)
            out["minor"].append(minor_ns * 1e9)
            out["major"].append(majors)
        progress(f"swap {r + 1}/{plan.repeats}: out {out['out'][-1]:,.0f} ns, in {out['in'][-1]:,.0f} ns "
                 f"({majors} major faults for {fits} pages)")  # fmt: skip
    how = f"plain process of {plan.swap_mib} MiB in a memory cgroup of {limit_bytes >> 20} MiB, swap file"
    return [
        Measured(
            "swap_out",
            out["out"],
            f"{how}: touching new pages past the limit, less a minor fault each, per "
            "page swapped out (reclaim, unmap, write)",
            key="costs.swap_out_ns",
        ),  # fmt: skip
        Measured(
            "swap_in",
            out["in"],
            f"{how}: touching swapped-out pages in random order, less the swap-outs "
            "they cause, per major fault (readahead included)",
            key="costs.swap_in_ns",
            extra={"major_faults_per_page": float(np.median(out["major"])) / fits},
        ),  # fmt: skip
    ]


COMBOS = (("4K/4K", False, False), ("4K/2M", False, True), ("2M/4K", True, False), ("2M/2M", True, True))


def page_sizes(plan: Plan, progress) -> list[Measured]:
    """The replay's time per access in each combination of guest and host page size (guest/host).

    The four guests live at once and replay in turn, round after round, so that a round's four times were
    taken under the same load: the other workers' memory traffic slows a replay as much as the time they
    take from it. Each combination's ``excess`` samples are its time less 2M/2M's in the same round."""
    rng = np.random.default_rng(0)
    ram_pages = (plan.access_mib << 20) // PAGE
    pages = rng.integers(0, ram_pages, plan.accesses).astype(np.int32)
    writes = rng.random(plan.accesses) < 0.3
    small = rng.integers(0, 64, plan.accesses).astype(np.int32)  # 256 KiB: every translation and line cached
    with contextlib.ExitStack() as stack:
        guests = {}
        for name, guest_thp, host_thp in COMBOS:
            guest = stack.enter_context(Guest(plan.access_mib, vcpus=1, guest_thp=guest_thp))
            guest.madvise("hugepage" if host_thp else "nohugepage")
            guest.madvise("populate_write")  # host faults first; the guest's boot pass then faults KVM only
            _touch(guest, np.arange(ram_pages))
            guests[name] = guest
        times: dict[str, list[float]] = {name: [] for name in guests}
        cached: dict[str, list[float]] = {name: [] for name in guests}
        for r in range(plan.repeats):
            for name, guest in guests.items():
                times[name].append(guest.run(pages, writes) / plan.accesses * 1e9)
                cached[name].append(guest.run(small[: plan.accesses // 4], writes[: plan.accesses // 4])
                                    / (plan.accesses // 4) * 1e9)  # fmt: skip
            progress(f"access round {r + 1}/{plan.repeats}: "
                     + ", ".join(f"{n} {t[-1]:.1f} ns" for n, t in times.items()))  # fmt: skip
        out = []
        for name, guest in guests.items():
            stats = guest.stats()
            huge = counters.anon_huge_bytes(guest.pid, *guest.ram_range) / (plan.access_mib << 20)
            excess = [a - b for a, b in zip(times[name], times["2M/2M"], strict=True)]
            extra = {"excess_median": round(float(np.median(excess)), 1), "thp_coverage": round(huge, 3),
                     "pages_2m": stats.get("pages_2m", 0), "pages_4k": stats.get("pages_4k", 0),
                     "cached_ns": round(float(np.quantile(cached[name], QUANTILE, method="lower")), 1)}  # fmt: skip
            what = f"replay of uniform random accesses over {plan.access_mib} MiB, guest {name[:2]} pages on host "
            out.append(
                Measured(f"access_{name}", times[name], f"{what}{name[3:]} pages", extra=extra | {"excess": excess})
            )
    return out


# --- the model beside it ----------------------------------------------------------------------------------


def model_translation_ns(walk_ref_ns: float, tlb_entries: int, pwc_miss: float, guest_thp: bool, host_thp: bool,
                         paging: str, footprint_pages: int) -> float:  # fmt: skip
    """The model's translation cost per access of uniform accesses over ``footprint_pages``: the KVM plugin's
    walk (plugins/kvm.py KVM.walk_refs, tlb_huge) through mmnsim.costs.translation_ns."""
    from mmnsim.costs import translation_ns
    from mmnsim.plugins.kvm import KVM, Paging

    costs = SimpleNamespace(tlb_entries=tlb_entries, walk_ref_ns=walk_ref_ns, pwc_miss=pwc_miss)
    kvm = SimpleNamespace(sim=SimpleNamespace(costs=costs), guest_huge=guest_thp,
                          cfg=SimpleNamespace(paging=Paging(paging)))  # fmt: skip
    accesses = 1_000_000
    walk = lambda huge: KVM.walk_refs(kvm, huge)  # noqa: E731
    return translation_ns(costs, accesses, accesses if host_thp else 0, footprint_pages, walk,
                          KVM.tlb_huge(kvm)) / accesses  # fmt: skip


def fitted_access(measured: dict[str, Measured], defaults: dict, tlb_entries: int, footprint: int) -> list[Measured]:
    """access_ns from the 2M/2M replay; walk_ref_ns from each round's 4K/4K time less its 2M/2M time, over the
    model's extra walk references under shadow paging, whose median is taken (a difference of two loaded
    times is as likely too low as too high)."""
    big = measured["access_2M/2M"]
    per_ref = [model_translation_ns(1.0, tlb_entries, defaults["pwc_miss"], g, h, "shadow", footprint)
               for _, g, h in (COMBOS[0], COMBOS[3])]  # fmt: skip
    refs = per_ref[0] - per_ref[1]
    walk = [max(excess, 0.0) / refs for excess in measured["access_4K/4K"].extra["excess"]]  # a faster 4K/4K: 0
    return [
        Measured("access", big.samples, "replay of uniform random accesses over resident guest RAM of 2 MiB pages "
                 "on 2 MiB sptes (the model's translation there: none, the TLB reaches it)", key="costs.access_ns"),
        Measured("walk_ref", walk, f"fitted: the median over rounds of 4K/4K less 2M/2M replay time per access, "
                 f"over the model's extra walk references ({refs:.2f} per access: shadow paging, pwc_miss "
                 f"{defaults['pwc_miss']:g}, {tlb_entries} TLB entries)", key="costs.walk_ref_ns", quantile=0.5),
    ]  # fmt: skip


def cpuinfo_tlb_entries() -> int | None:
    """AMD's /proc/cpuinfo ``TLB size: N 4K pages`` (L1 and L2 data TLB entries); None where absent."""
    found = re.search(r"^TLB size\s*:\s*(\d+)", Path("/proc/cpuinfo").read_text(), re.M)
    return int(found.group(1)) if found else None


def splintering_table(measured: dict[str, Measured], profile: dict, defaults: dict, footprint: int) -> str:
    """Markdown: each combination's measured time per access (lower quartile) and its excess over 2M/2M (the
    median over rounds of the difference within a round), beside the model's translation cost per access
    with the default costs under EPT and under shadow paging, and with the profile's under shadow paging."""
    rows = ["| guest/host | measured ns/access | excess over 2M/2M (median) | model, default costs, EPT | "
            "model, default costs, shadow | model, profile costs, shadow | host THP | 2 MiB sptes |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, g, h in COMBOS:
        m = measured[f"access_{name}"]
        d = [model_translation_ns(defaults["walk_ref_ns"], defaults["tlb_entries"], defaults["pwc_miss"], g, h, p,
                                  footprint) for p in ("ept", "shadow")]  # fmt: skip
        p = model_translation_ns(profile["walk_ref_ns"], profile["tlb_entries"], profile["pwc_miss"], g, h,
                                 "shadow", footprint)  # fmt: skip
        rows.append(f"| {name} | {m.value:.1f} | {m.extra['excess_median']:+.1f} | {d[0]:.1f} | {d[1]:.1f} | {p:.1f} | "
                    f"{m.extra['thp_coverage']:.0%} | {m.extra['pages_2m']} |")  # fmt: skip
    return "\n".join(rows)


# --- the profile ------------------------------------------------------------------------------------------


def default_profile() -> tuple[dict, dict]:
    """The default profile's host costs and KVM's (conf/costs/default.yaml, conf/secondary/kvm.yaml)."""
    import yaml

    folder = resources.files("mmnsim.conf")
    costs = yaml.safe_load((folder / "costs" / "default.yaml").read_text())
    kvm = yaml.safe_load((folder / "secondary" / "kvm.yaml").read_text())
    return costs, kvm


def outside_default_ranges(found: list[Measured]) -> list[str]:
    """One line for each measured cost outside the range its default profile gives it: a sensitivity analysis
    (``mmnsim-experiment NAME --sensitivity``) varies the default over that range, so it does not reach this
    machine until the range is widened."""
    costs, kvm = default_profile()
    files = {"costs": (costs, "conf/costs/default.yaml"), "secondary": (kvm, "conf/secondary/kvm.yaml")}
    lines = []
    for m in found:
        section, _, key = (m.key or "").partition(".")
        data, file = files.get(section, ({}, ""))
        low, high = (((data.get("sources") or {}).get(key) or {}).get("range") or [None, None])[:2]
        if low is not None and not low <= m.value <= high:
            lines.append(f"{m.key} measured {m.value:,.1f} lies outside the default's range [{low:g}, {high:g}] "
                         f"({file}): widen it there for the sensitivity analyses to reach this machine")  # fmt: skip
    return lines


def _number(value: float) -> int | float:
    return int(round(value)) if abs(value) >= 10 else round(value, 1)


def profile_yaml(name: str, found: list[Measured], provenance: dict, table: str) -> str:
    """The profile file: Hydra's defaults list (the default profile), then the measured keys with their
    sources (range: the repeats' minimum to maximum), provenance and what is inherited in comments."""
    costs, kvm = default_profile()
    keyed = [m for m in found if m.key]
    given = {m.key for m in keyed}
    inherited = [f"costs.{k}" for k in costs if k != "sources" and f"costs.{k}" not in given]
    inherited += [f"secondary.{k}" for k in kvm if k.endswith("_ns") and f"secondary.{k}" not in given]
    lines = ["# @package _global_",
             f"# Cost profile `{name}`, measured on this machine kind by mmnsim-calibrate (framework/real/calibrate.py)"
             "# Select it with costs=" + name + " (with secondary=kvm: it sets KVM's measured costs too).",
             "#", "# Provenance:"]  # fmt: skip
    lines += [f"#   {k}: {v}" for k, v in provenance.items()]
    lines += ["#", "# Each value is the lower quartile of its repeats (load on the shared machine only adds time;",
              "# calibrate.QUANTILE says why not the minimum); its range is the repeats' minimum to maximum.",
              "# Not measured, inherited from the default profile",
              "# (conf/costs/default.yaml; KVM's from conf/secondary/kvm.yaml):"]  # fmt: skip
    lines += [f"#   {k}" for k in inherited]
    outside = outside_default_ranges(found)
    if outside:
        lines += ["#", "# Outside the default profile's ranges:"] + [f"#   {line}" for line in outside]
    lines += ["#", "# Also measured (ns; lower quartile, median, maximum over the repeats):"]
    for m in found:
        if not m.key:
            extra = "".join(f", {k} {v:g}" for k, v in m.extra.items() if not isinstance(v, list))
            lines.append(f"#   {m.name}: {m.value:,.1f} / {m.median:,.1f} / {m.high:,.1f}{extra} ({m.what})")
    lines += ["#", "# Guest and host page sizes (docs/costs.md, the splintering table):"]
    lines += [f"#   {row}" for row in table.splitlines()]
    lines += ["defaults:", "  - /costs/default@costs", "  - _self_", ""]
    date = provenance["date"][:10]
    machine = f"{provenance['cpu']}, {provenance['kvm_module']} {provenance['kvm_paging']} paging"
    for section in ("costs", "secondary"):
        mine = [m for m in keyed if m.key.startswith(section + ".")]
        if not mine:
            continue
        lines.append(f"{section}:")
        if section == "secondary" and provenance["kvm_paging"] in ("shadow", "ept"):
            lines.append(f"  paging: {provenance['kvm_paging']}  # this machine's KVM translates so (not a cost)")
        for m in mine:
            lines.append(f"  {m.key.split('.', 1)[1]}: {_number(m.value)}")
        lines.append("  sources:")
        if section == "costs":  # the profile itself: read by load_settings (SECONDARIES), and provenance
            lines += ["    profile:", f"      name: {json.dumps(name)}",
                      f"      secondaries: {json.dumps(SECONDARIES)}"]  # fmt: skip
            lines += [f"      {k}: {json.dumps(str(v))}" for k, v in provenance.items()]
        for m in mine:
            key = m.key.split(".", 1)[1]
            low, high = _number(m.low), _number(m.high)
            source = (f"measured by mmnsim-calibrate on {machine}, {date}: {m.what}; lower quartile of "
                      f"{len(m.samples)} repeats (minimum {m.low:,.1f}, median {m.median:,.1f}, maximum "
                      f"{m.high:,.1f})")  # fmt: skip
            lines += [f"    {key}:", f"      range: [{low}, {high}]", f"      source: {json.dumps(source)}"]
    return "\n".join(lines) + "\n"


def tlb_measured(defaults: dict) -> Measured | None:
    entries = cpuinfo_tlb_entries()
    if entries is None:
        return None
    return Measured("tlb_entries", [float(entries)], "/proc/cpuinfo TLB size (4 KiB entries, L1 and L2)",
                    key="costs.tlb_entries")  # fmt: skip


def measure(plan: Plan, run: cleanup.RunResources, progress) -> tuple[list[Measured], str]:
    """Every measurement, and the splintering table."""
    costs, _ = default_profile()
    run.swapfile(swap_bytes(plan))  # swap, guest_mode and flush_kick page out to it
    found = host_faults(plan, progress) + kvm_faults(plan, progress) + swap(plan, run, progress)
    found += guest_mode(plan, progress) + flush_kick(plan, progress)
    sizes = {m.name: m for m in page_sizes(plan, progress)}
    tlb = tlb_measured(costs)
    entries = int(tlb.value) if tlb else costs["tlb_entries"]
    footprint = (plan.access_mib << 20) // PAGE
    fitted = fitted_access(sizes, costs, entries, footprint)
    profile = {**costs, "tlb_entries": entries, "walk_ref_ns": fitted[1].value}
    table = splintering_table(sizes, profile, costs, footprint)
    return found + list(sizes.values()) + fitted + ([tlb] if tlb else []), table


def summary(found: list[Measured]) -> str:
    """Markdown: each figure, its profile key, lower quartile, minimum, median, maximum."""
    rows = ["| figure | profile key | value (lower quartile) | min | median | max | what |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in found:
        rows.append(f"| {m.name} | {m.key or ''} | {m.value:,.1f} | {m.low:,.1f} | {m.median:,.1f} | {m.high:,.1f} "
                    f"| {m.what} |")  # fmt: skip
    return "\n".join(rows)


# --- the command ------------------------------------------------------------------------------------------


def output_path(name: str, output: str | None, force: bool) -> Path:
    if not NAME.match(name):
        raise ConfigError(f"profile name {name!r} is not accepted: letters, digits, '_', '.', '-' (at most 64), "
                          "starting with a letter or digit")  # fmt: skip
    if name == "default":
        raise ConfigError("profile name 'default' is the sourced default profile: choose another name")
    path = Path(output) if output else Path(str(resources.files("mmnsim.conf") / "costs")) / f"{name}.yaml"
    if path.suffix != ".yaml":
        raise ConfigError(f"--output {path}: a profile is a .yaml file")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--output {path}: directory {path.parent} is not writable")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: pass --force to replace it")
    return path


def machine_provenance(argv: list[str], plan: Plan, load_before: tuple, load_after: tuple) -> dict:
    from mmnsim.output import git_commit

    info = machineinfo.provenance()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["mmnsim-calibrate", *argv]),
        "machine": os.uname().nodename,
        "cpu": info["machine.cpu"],
        "kernel": info["machine.kernel"],
        "kvm_module": info["machine.kvm_module"],
        "kvm_paging": info["machine.kvm_paging"],
        "thp": info["machine.thp"],
        "load": f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} before, "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after (1, 5, 15 min)",
        "repeats": f"{plan.repeats} of {plan.pages} pages each ({plan.flushes} single-page flush pairs a repeat; "
        f"swap over {plan.swap_mib} MiB; {plan.accesses:,} accesses over {plan.access_mib} MiB)",
        "statistic": "lower quartile of the repeats",
        "commit": git_commit(),
    }


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mmnsim-calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the profile's name: conf/costs/NAME.yaml, selected with costs=NAME")
    parser.add_argument("--output", help="write the profile here instead (a .yaml file)")
    parser.add_argument("--force", action="store_true", help="replace an existing profile")
    parser.add_argument("--repeats", type=int, default=Plan.repeats)
    parser.add_argument("--pages", type=int, default=Plan.pages, help="4 KiB pages per fault measurement")
    parser.add_argument("--flushes", type=int, default=Plan.flushes, help="single-page flush pairs per repeat")
    parser.add_argument("--swap-mib", type=int, default=Plan.swap_mib, help="the swap test's process")
    parser.add_argument("--access-mib", type=int, default=Plan.access_mib, help="the page-size replays' guest")
    parser.add_argument("--accesses", type=int, default=Plan.accesses, help="accesses per page-size replay")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds; past it, stop and clean up")
    args = parser.parse_args(argv)
    plan = Plan(args.repeats, args.pages, args.flushes, args.swap_mib, args.access_mib, args.accesses)

    def progress(line: str) -> None:
        print(f"mmnsim-calibrate: {line}", file=sys.stderr, flush=True)

    try:
        plan.check()
        path = output_path(args.name, args.output, args.force)
        guest_bytes = max(len(COMBOS) * plan.access_mib, plan.repeats * plan.pages // 256 + 2,
                          sum(_guest_mode_pages(plan)) // 256 + 2) << 20  # fmt: skip
        preflight.check(guest_bytes, guest_bytes, swap_bytes(plan))
        load_before = os.getloadavg()
        with cleanup.RunResources(f"calibrate-{args.name}", time_limit_s=args.time_limit) as run:
            found, table = measure(plan, run, progress)
        provenance = machine_provenance(argv, plan, load_before, os.getloadavg())
        text = profile_yaml(args.name, found, provenance, table)
        write_atomically(path, text)
    except ConfigError as exc:
        print(f"mmnsim-calibrate: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (cleanup.RunInterrupted): 128 + the signal
        from .run import exit_status

        print(f"mmnsim-calibrate: stopped ({exc or 'Ctrl-C'}); everything it created was removed", file=sys.stderr)
        sys.exit(exit_status(exc))
    except (cleanup.RunTimeout, OSError, RuntimeError) as exc:
        print(f"mmnsim-calibrate: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    print(summary(found))
    outside = outside_default_ranges(found)
    if outside:
        print("\n" + "\n".join(outside))
    print()
    print(table)
    print(f"\nwrote {path}: select it with costs={args.name}")


if __name__ == "__main__":
    main()
