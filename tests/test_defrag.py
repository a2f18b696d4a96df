"""Transparent huge pages, compaction and khugepaged; KVM's 2 MiB mappings follow the host's."""

import numpy as np
import pytest

from conftest import run, simulation
from mmnsim.compaction import compact
from mmnsim.host import THP
from mmnsim.invariants import KINDS
from mmnsim.pagebits import HUGE_PAGES, P_HUGE, S_HUGE

ROOMY = ("host.thp=always", "host.memory_mib=256", "guest.memory_mib=64", "workload.accesses=200000")


def test_a_thp_at_fault_time_and_one_2mib_spte_for_it():
    sim, m = run(*ROOMY)
    mm, kvm = sim.mms[0], sim.secondaries[0]
    regions = mm.npages // HUGE_PAGES
    assert m["thp_fault_alloc"] == regions and (mm.flags & P_HUGE).all()
    assert (kvm.sflags & S_HUGE).all() and m["secondary_faults"] == regions  # one fault maps 2 MiB
    frames = mm.pte[:HUGE_PAGES]
    assert frames[0] % HUGE_PAGES == 0 and np.array_equal(frames, frames[0] + np.arange(HUGE_PAGES))
    assert m["huge_accesses"] == m["accesses"] and m["thp_coverage"] == 1.0
    assert m["invariant_violations"] == 0


def test_reclaim_and_partial_munmap_split_the_thp_and_kvm_drops_its_2mib_entry():
    sim, m = run(*ROOMY)
    mm, kvm = sim.mms[0], sim.secondaries[0]
    mm.munmap(10, 20)  # part of the first THP
    assert not (mm.flags[:HUGE_PAGES] & P_HUGE).any() and (mm.flags[HUGE_PAGES:] & P_HUGE).all()
    assert (kvm.spte[:HUGE_PAGES] < 0).all() and (kvm.spte[HUGE_PAGES:] >= 0).all()
    assert (mm.pte[20:HUGE_PAGES] >= 0).all()  # the rest of it stays, now as 4 KiB pages
    pressed, p = run("host.thp=always", "host.memory_mib=48", "guest.memory_mib=64", "workload.accesses=300000")
    assert p["thp_split"] > 0 and p["swap_outs"] > 0 and p["invariant_violations"] == 0
    assert sim.check_invariants().counts.sum() == 0


def test_khugepaged_collapses_a_region_keeping_its_contents():
    sim = simulation("host.memory_mib=256", "guest.memory_mib=64", "workload.accesses=0",
                     "policies=[swap,defrag]", "policies.defrag.scan_sleep_ms=1")  # fmt: skip
    sim.run()  # boot at 4 KiB (host.thp is never)
    mm, kvm = sim.mms[0], sim.secondaries[0]
    tokens = mm.token.copy()
    assert not (mm.flags & P_HUGE).any()
    sim.step()
    assert sim.metrics()["khugepaged_scanned"] == 0  # THP never: khugepaged does not run
    sim.host_cfg.thp = THP.madvise  # echo madvise > /sys/kernel/mm/transparent_hugepage/enabled
    sim.time_ns += 1e9  # let khugepaged's budget build up
    sim.step()
    assert (mm.flags & P_HUGE).all() and sim.metrics()["thp_collapse_alloc"] == mm.npages // HUGE_PAGES
    assert np.array_equal(mm.token, tokens) and sim.check_invariants().counts.sum() == 0
    sim.run_client(mm, kvm, np.arange(0, mm.npages, HUGE_PAGES))  # one KVM fault per region, each 2 MiB
    assert (kvm.sflags & S_HUGE).all()


def test_compaction_empties_pageblocks_but_not_one_holding_a_pinned_page():
    sim = simulation("host.memory_mib=64", "guest.memory_mib=48", "workload.accesses=0", "secondary.mode=pin")
    sim.run()
    mm = sim.mms[0]
    kvm = sim.secondaries[0]
    # Leave every pageblock partly used: drop 3 of every 4 pages (a pinned page's frame lives on, an
    # orphan), then let go of the pins on the upper half; the lower half's pageblocks stay pinned.
    mm.discard(np.flatnonzero(np.arange(mm.npages) % 4 != 0))
    kvm.zap(np.array([mm.npages // 2]), np.array([mm.npages]))
    before = sim.host.free_blocks(0)
    freed = compact(sim, 0, 64)
    m = sim.metrics()
    assert freed > 0 and m["compact_success"] == freed and m["compact_fail"] > 0
    assert sim.host.free_blocks(0) == before + freed
    # Integrity, pins and accounting hold through the moves. (KVM still maps the pinned pages the process
    # dropped: those stale entries are the coherence hole of pinning, reported as such.)
    counts = dict(zip(KINDS, sim.check_invariants().counts, strict=True))
    assert counts["integrity"] == counts["pin"] == counts["conservation"] == counts["isolation"] == 0


@pytest.fixture(scope="module")
def fragmented():
    scenario = ("+scenario=defrag_fragmented", "workload.accesses=12000000")
    return {mode: run(*scenario, f"secondary.mode={mode}", small=False)[1] for mode in ("notifier", "pin")}


def test_from_a_fragmented_host_notifiers_get_the_guest_onto_huge_pages_and_pins_do_not(fragmented):
    n, p = fragmented["notifier"], fragmented["pin"]
    assert n["thp_coverage"] > 0.8 > 0.2 > p["thp_coverage"]
    assert n["kvm.huge_mapped_fraction"] > 0.8 and p["kvm.huge_mapped_fraction"] == 0
    assert p["compact_fail"] > 0 and n["compact_fail"] == 0  # the pins make pageblocks unmovable
    assert p["thp_collapse_failed_pinned"] > 0
    assert n["kvm.translation_ns"] < 0.5 * p["kvm.translation_ns"]  # 2 MiB sptes: TLB reach and shorter walks
    assert n["invariant_violations"] == p["invariant_violations"] == 0
