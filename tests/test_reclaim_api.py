"""The API a reclaim policy builds on (docs/plugins.md, "A reclaim policy: proactive reclaim"): an mm's folios in
the scan's order (``lru_folios``), a look at their young bits that clears nothing (``referenced`` with
``test_young``), each mm's counters and refaults (``mm.counters()``), ``charge_reclaim``, and when ``host_tick``
and ``collect_metrics`` run."""

import numpy as np
import pytest

from conftest import run, simulation
from mmnsim import HostPolicy, charge_reclaim, folio_pages, hookimpl, lru_folios, referenced, scan_frames, swap_out
from mmnsim.pagebits import S_ACCESSED

HOG = "processes=[{name: hog, memory_mib: 16, node: 0, workload: {name: uniform, accesses: 200000}}]"


def scan_order(sim, mm, hand: int) -> np.ndarray:
    """Every candidate ``scan_frames`` finds from ``hand`` in one sweep, kept if it holds a page of ``mm``."""
    frames, _, _ = scan_frames(sim, hand, sim.host.nframes, sim.host.nframes)
    keys = sim.host.ft.key[frames]
    return frames[(keys >= mm.base) & (keys < mm.base + mm.npages)]


@pytest.mark.parametrize("mode", ["notifier", "pin"])
def test_lru_folios_are_the_scans_candidates_of_one_mm_in_its_order(mode):
    # THPs on the guest (host.thp=always) and 4 KiB pages of a process beside it; in pin mode KVM pins the guest
    sim, _ = run(f"secondary.mode={mode}", "host.thp=always", "host.memory_mib=128", HOG, "workload.accesses=100000")
    guest, hog = sim.mms
    for mm in sim.mms:
        for hand in (0, sim.host.nframes // 3, sim.host.nframes - 1):
            folios = lru_folios(sim, mm, hand)
            assert np.array_equal(folios.frames, scan_order(sim, mm, hand)), (mm.name, hand)
            assert np.array_equal(folios.npages, folio_pages(sim, folios.frames))
            assert np.array_equal(folios.pages, sim.host.ft.key[folios.frames] - mm.base)
    huge = lru_folios(sim, guest).npages
    if mode == "notifier":
        assert (huge == 512).any() and guest.counters().pinned == 0
    else:  # every guest page is pinned: nothing to reclaim there, and the process's pages are all there
        assert huge.size == 0 and guest.counters().pinned == guest.counters().resident > 0
    assert lru_folios(sim, hog).npages.sum() == hog.counters().resident > 0  # its THPs as 512 pages each


def test_lru_folios_are_the_callers_own_copies():
    sim, _ = run("workload.accesses=50000", "host.memory_mib=128")
    mm = sim.mms[0]
    folios = lru_folios(sim, mm)
    for array in folios:
        for host_array in (*sim.host.ft, *sim.host.pt, mm.pte):
            if isinstance(host_array, np.ndarray):
                assert not np.shares_memory(array, host_array)
    folios.frames[:] = 0
    assert np.array_equal(lru_folios(sim, mm).frames, scan_order(sim, mm, 0))


def test_test_young_looks_without_clearing_and_reclaim_then_sees_the_same():
    sim = simulation("workload.accesses=0", "guest.memory_mib=8", "host.memory_mib=64")
    sim.run()
    mm, kvm = sim.mms[0], sim.secondaries[0]
    frames = mm.pte[:200].astype(np.int64)
    referenced(sim, frames, "clear_young")  # clears what the boot set
    sim.run_client(mm, kvm, np.arange(100))  # hits through KVM: its accessed bits, not the PTE's
    pte_bits, kvm_bits = mm.flags.copy(), kvm.sflags & S_ACCESSED
    looked = referenced(sim, frames, "test_young")
    assert looked[:100].all() and not looked[100:].any()
    assert np.array_equal(mm.flags, pte_bits) and np.array_equal(kvm.sflags & S_ACCESSED, kvm_bits)  # untouched
    assert np.array_equal(referenced(sim, frames, "test_young"), looked)
    assert np.array_equal(referenced(sim, frames, "clear_young"), looked)  # what reclaim sees is unchanged
    assert not referenced(sim, frames, "test_young").any()
    assert sim.check_invariants().counts.sum() == 0


def test_test_young_reads_the_pte_bit_of_a_process_and_a_thp_as_one():
    sim, _ = run("host.thp=madvise", "host.memory_mib=128", HOG, "workload.accesses=0")  # THPs for the guest only
    guest, hog = sim.mms
    folios = lru_folios(sim, guest)
    thp = folios.frames[folios.npages == 512][0]
    every = np.arange(thp, thp + 512)
    referenced(sim, every, "clear_young")
    hog_frames = hog.pte[:64].astype(np.int64)
    referenced(sim, hog_frames, "clear_young")
    first = int(sim.host.ft.key[thp]) - guest.base
    guest.access(np.array([first + 300]))  # the CPU touches one page of the THP: its PMD's accessed bit
    hog.access(np.arange(10))
    assert referenced(sim, every, "test_young").all()  # any frame of it answers for the whole
    assert np.array_equal(referenced(sim, hog_frames, "test_young"), np.arange(64) < 10)


@pytest.mark.parametrize("fault", ["none", "test_young_clears"])
def test_a_test_young_that_clears_is_caught_when_a_policy_looks(fault):
    sim = simulation("secondary=faulty", f"secondary.fault={fault}", "workload.accesses=0", "workload.boot=false",
                     "guest.memory_mib=16", "host.memory_mib=64")  # fmt: skip
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64))
    assert referenced(sim, mm.pte[:64].astype(np.int64), "test_young").all()
    if fault == "none":
        assert not sim.violation_messages
    else:
        assert sim.metrics()["accessed_violations"] >= 64
        assert "Culprit: faulty[guest0] in test_young" in sim.violation_messages[0]


def test_each_mms_faults_are_its_own_and_add_up_to_the_kernels():
    # Under pressure, a guest with a GPU (a fault maps 64 KiB around it: a populate inside the batch) and a process
    gpu = "guest.devices=[{secondary: {name: gpu, region_start_mib: 32, region_mib: 32}, workload: {name: uniform}}]"
    sim, m = run(gpu, HOG, "workload.accesses=400000")
    counters = [mm.counters() for mm in sim.mms]
    assert m["major_faults"] > 0 and all(c.refaults > 0 for c in counters)
    assert sum(c.refaults for c in counters) == m["major_faults"]
    assert sum(c.minor_faults for c in counters) == m["minor_faults"]
    for mm, c in zip(sim.mms, counters, strict=True):
        assert c.resident == np.count_nonzero(mm.pte >= 0) and c.swapped == np.count_nonzero(mm.pte <= -2)
        assert c.pinned == 0
    # Pages of both swapped out, then only the guest's touched again: the refaults are the guest's alone
    guest, hog = sim.mms
    hog.access(np.arange(10))  # (the process finished first: two-list reclaim took all its idle pages)
    mine, theirs = lru_folios(sim, guest).frames[:10], lru_folios(sim, hog).frames[:10]
    pages = sim.host.ft.key[mine] - guest.base
    assert swap_out(sim, np.concatenate([mine, theirs])) == 20
    before = [mm.counters() for mm in sim.mms]
    guest.access(pages)
    after = [mm.counters() for mm in sim.mms]
    assert after[0].refaults - before[0].refaults == 10 and after[1] == before[1]
    assert after[0].swapped == before[0].swapped - 10


def test_charge_reclaim_charges_the_scan_and_the_writes_to_host_cpu_time():
    sim = simulation("workload.accesses=0", "guest.memory_mib=8", "host.memory_mib=64")
    before = sim.host_cpu_ns
    ns = charge_reclaim(sim, 1000, 10)
    assert ns == 1000 * sim.costs.reclaim_scan_ns + 10 * sim.costs.swap_out_ns > 0
    assert sim.host_cpu_ns - before == ns


class Recorder(HostPolicy):
    """Notes what it sees when the framework calls it."""

    name = "recorder"
    ticks: list[tuple[int, float, int]]
    exited: list[bool]

    @hookimpl
    def host_tick(self, sim) -> None:
        self.ticks.append((sim.tick, sim.time_ns, sim.counter("accesses_attempted")))

    @hookimpl
    def collect_metrics(self, sim) -> dict:
        self.exited.append(all(mm.exited for mm in sim.mms))
        return {}


def test_host_tick_starts_each_tick_before_its_accesses_and_metrics_come_before_teardown():
    sim = simulation("workload.accesses=100000", "engine.accesses_per_tick=16384", "host.memory_mib=128")
    recorder = Recorder(sim, None)
    recorder.ticks, recorder.exited = [], []
    sim.pm.register(recorder, name="policy:recorder")
    sim.run(teardown=True)
    ticks = [t for t, _, _ in recorder.ticks]
    assert ticks == list(range(sim.tick))  # once a tick, from tick 0, sim.tick the tick about to run
    assert recorder.ticks[0][1:] == (0.0, 0)  # the first: no time has passed, no access made
    assert all(done == tick * 16384 for tick, _, done in recorder.ticks)  # before that tick's batch
    assert recorder.exited == [False, True]  # the results' call, then the one after teardown (violations only)
