"""The API a reclaim policy builds on (docs/plugins.md, "A reclaim policy"): an mm's folios in the scan's order
(``lru_folios``), each mm's counters and refaults (``mm.counters()``), and when ``host_tick`` and
``collect_metrics`` run."""

import numpy as np
import pytest

from conftest import run, simulation
from mmnsim import HostPolicy, folio_pages, hookimpl, lru_folios, scan_frames, swap_out

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
    mine, theirs = lru_folios(sim, guest).frames[:10], lru_folios(sim, hog).frames[:10]
    pages = sim.host.ft.key[mine] - guest.base
    assert swap_out(sim, np.concatenate([mine, theirs])) == 20
    before = [mm.counters() for mm in sim.mms]
    guest.access(pages)
    after = [mm.counters() for mm in sim.mms]
    assert after[0].refaults - before[0].refaults == 10 and after[1] == before[1]
    assert after[0].swapped == before[0].swapped - 10


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
