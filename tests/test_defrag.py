"""Transparent huge pages, compaction and khugepaged; KVM's 2 MiB mappings follow the host's."""

import numpy as np
import pytest

from conftest import run, simulation
from mmnsim import swap_out
from mmnsim.compaction import compact
from mmnsim.frames import REG_FLAGS, THP_ENABLED
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
    assert sim.check_invariants().counts.sum() == 0


PRESSED = ("host.thp=always", "host.memory_mib=48", "guest.memory_mib=64", "workload.accesses=300000")


def test_reclaim_swaps_an_old_thp_out_whole_into_a_free_swap_cluster():
    sim, m = run(*PRESSED)
    assert m["thp_swpout"] > 0 and m["swap_outs"] >= 512 * m["thp_swpout"]
    assert m["thp_swpout_fallback"] == 0 and m["invariant_violations"] == 0


def test_without_a_free_swap_cluster_an_old_thp_is_split_and_swapped_out_page_by_page():
    sim, m = run(*PRESSED, "host.swap_mib=1")  # 256 slots: never a cluster of 512
    assert m["thp_swpout"] == 0 and m["thp_swpout_fallback"] > 0 and m["thp_split"] >= m["thp_swpout_fallback"]
    assert m["swap_outs"] > 0 and m["invariant_violations"] == 0


def test_a_swap_file_gets_no_large_entries_so_every_old_thp_is_split():
    """mm/swapfile.c cluster_alloc_swap_entry: no large swap entries unless the area is a block device."""
    _, m = run(*PRESSED, "host.swap_device=file")  # the same free clusters as the block device's run above
    assert m["thp_swpout"] == 0 and m["thp_swpout_fallback"] > 0 and m["thp_split"] >= m["thp_swpout_fallback"]
    assert m["swap_outs"] > 0 and m["invariant_violations"] == 0


def test_a_thp_is_aged_as_one_folio_and_a_hot_one_stays_huge():
    # One 4 KiB page of each even THP used every tick: the THP is young as a whole (its PMD's bit, its 2 MiB
    # spte's), so reclaim leaves it huge and KVM keeps its 2 MiB entry; the odd ones, unused, go whole.
    sim = simulation("host.thp=always", "host.memory_mib=128", "guest.memory_mib=64", "workload.accesses=0",
                     "host.swap_mib=128")  # fmt: skip
    sim.run()
    mm, kvm = sim.mms[0], sim.secondaries[0]
    assert (mm.flags & P_HUGE).all()  # room enough: every region a THP
    hot = np.arange(0, mm.npages, 2 * HUGE_PAGES) + 7  # page 7 of every even THP
    from mmnsim import referenced

    frames = np.arange(0, sim.host.nframes, dtype=np.int64)
    frames = frames[sim.host.ft.key[frames] >= 0]
    referenced(sim, frames)  # age everything: the boot set every bit
    sim.run_client(mm, kvm, hot)
    young = referenced(sim, frames)
    keys = sim.host.ft.key[frames]
    thp_of = (keys - mm.base) // HUGE_PAGES
    assert (young == (thp_of % 2 == 0)).all()  # every frame of a hot THP answers young, of a cold one old
    assert sim.metrics()["accessed_violations"] == 0
    swap_out(sim, frames[~young])
    assert (mm.flags[:HUGE_PAGES] & P_HUGE).all() and (kvm.sflags[:HUGE_PAGES] & S_HUGE).all()
    assert (mm.pte[HUGE_PAGES : 2 * HUGE_PAGES] < -1).all()  # the cold one is in swap, whole
    assert sim.metrics()["thp_swpout"] == mm.npages // HUGE_PAGES // 2
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
    """The defrag scenario on the smaller host: the guest and the churning cache overcommit it."""
    scenario = ("+scenario=defrag_fragmented", "workload.accesses=12000000", "host.memory_mib=1536")
    return {mode: run(*scenario, f"secondary.mode={mode}", small=False)[1] for mode in ("notifier", "pin")}


def test_thps_come_at_fault_time_and_under_pressure_only_the_notifier_guest_loses_them(fragmented):
    n, p = fragmented["notifier"], fragmented["pin"]
    for m in (n, p):  # QEMU's MADV_HUGEPAGE: each THP fault compacts if it must, pinned or not
        assert m["compact_stall"] > 0 and m["thp_fault_fallback"] == 0 and m["thp_fault_alloc"] >= 256
    assert p["thp_coverage"] == 1.0 and p["kvm.huge_mapped_fraction"] == 1.0
    # Reclaim takes the notifier guest's old THPs whole (a THP is aged by its one accessed bit): none is split,
    # the cold ones go to swap (coverage drops), KVM keeps its 2 MiB entries for the hot ones; a swapped-out THP
    # that is touched again comes back a 4 KiB page at a time (do_swap_page), mapped by 4 KiB sptes.
    assert n["thp_split"] == 0 and n["thp_swpout"] > 0 and n["thp_coverage"] < 1.0
    assert 0.5 < n["kvm.huge_mapped_fraction"] < 1.0 and n["major_faults"] > 0
    assert p["compact_fail"] > 0 and n["compact_fail"] == 0  # the pins make pageblocks unmovable
    assert p["swap_outs"] > 2 * n["swap_outs"]  # the pinned guest's neighbour pays for it
    assert n["invariant_violations"] == p["invariant_violations"] == 0


# -- QEMU's MADV_HUGEPAGE, direct compaction at fault time, khugepaged at its defaults --


def _fragmented(*extra):
    """A 64 MiB host whose free memory is all in holes: a process filled it, then dropped 3 pages in 4."""
    sim = simulation("host.memory_mib=64", "guest.memory_mib=16", "workload.accesses=0", "workload.boot=false",
                     "processes=[{name: filler, memory_mib: 60, node: 0, workload: {name: uniform, accesses: 0}}]",
                     *extra)  # fmt: skip
    filler = sim.mms[1]
    filler.access(np.arange(filler.npages), np.ones(filler.npages, dtype=bool))
    filler.discard(np.flatnonzero(np.arange(filler.npages) % 4 != 0))
    return sim, sim.mms[0], sim.secondaries[0]


def test_a_madvised_guest_compacts_directly_at_fault_time_and_gets_its_thp():
    sim, mm, kvm = _fragmented("host.thp=madvise")
    free_blocks = sim.host.free_blocks(0)
    sim.run_client(mm, kvm, np.arange(0, mm.npages, HUGE_PAGES))
    m = sim.metrics()
    assert m["compact_stall"] >= mm.npages // HUGE_PAGES - free_blocks > 0  # a compaction for each missing block
    assert (mm.flags & P_HUGE).all() and m["thp_fault_alloc"] == mm.npages // HUGE_PAGES
    assert m["thp_fault_fallback"] == 0 and m["invariant_violations"] == 0


def test_without_madv_hugepage_a_thp_fault_falls_back_and_never_compacts():
    sim, mm, kvm = _fragmented("host.thp=always", "guest.madvise_hugepage=false")
    free_blocks = sim.host.free_blocks(0)
    sim.run_client(mm, kvm, np.arange(0, mm.npages, HUGE_PAGES))
    m = sim.metrics()
    assert m["compact_stall"] == 0 and m["thp_fault_fallback"] > 0
    huge_regions = int(np.count_nonzero(mm.flags[::HUGE_PAGES] & P_HUGE))
    assert huge_regions <= free_blocks < mm.npages // HUGE_PAGES  # only the blocks that were free


def test_thp_madvise_mode_gives_huge_pages_only_to_madvised_memory():
    sim = simulation(
        "host.thp=madvise",
        "host.memory_mib=256",
        "guest.memory_mib=16",
        "workload.accesses=0",
        "processes=[{name: plain, memory_mib: 16, node: 0, workload: {name: uniform, accesses: 0}}]",
    )
    guest, plain = sim.mms
    assert guest.hugepage and not plain.hugepage
    guest.access(np.arange(guest.npages))
    plain.access(np.arange(plain.npages))
    assert (guest.flags & P_HUGE).all() and not (plain.flags & P_HUGE).any()


def test_khugepaged_at_its_defaults_scans_4096_pages_every_10_seconds():
    sim = simulation("host.memory_mib=256", "guest.memory_mib=64", "workload.accesses=0", "host.thp=madvise",
                     "guest.madvise_hugepage=false", "policies=[swap,defrag]")  # fmt: skip
    defrag = next(p for p in sim.policies if p.name == "defrag")
    sim.host_cfg.thp = THP.always  # so that khugepaged scans the (non-madvised) guest
    sim.time_ns = 9.9e9
    sim.step()
    assert defrag.metrics["khugepaged_scanned"] == 0
    sim.time_ns = 30.0e9  # three wake-ups
    sim.step()
    assert defrag.metrics["khugepaged_scanned"] == 3 * 4096


def test_khugepaged_swaps_in_up_to_max_ptes_swap_pages_to_collapse_a_region():
    sim = simulation("host.memory_mib=256", "guest.memory_mib=4", "workload.accesses=0", "host.thp=madvise",
                     "guest.madvise_hugepage=true", "policies=[swap,defrag]", "policies.defrag.compaction=false",
                     small=False)  # fmt: skip
    mm = sim.mms[0]
    sim.host._ft.reg[REG_FLAGS] &= ~THP_ENABLED  # boot on 4 KiB pages: no THP at fault time
    mm.access(np.arange(mm.npages), np.ones(mm.npages, dtype=bool))
    swap_out(sim, mm.pte[np.arange(64)].astype(np.int64))  # region 0: 64 swapped (the limit)
    swap_out(sim, mm.pte[HUGE_PAGES + np.arange(65)].astype(np.int64))  # region 1: 65 swapped
    tokens = mm.token.copy()
    defrag = next(p for p in sim.policies if p.name == "defrag")
    defrag._khugepaged_do_scan(sim)
    assert (mm.flags[:HUGE_PAGES] & P_HUGE).all() and defrag.metrics["khugepaged_swapins"] == 64
    assert not (mm.flags[HUGE_PAGES:] & P_HUGE).any()  # 65 > max_ptes_swap: left alone
    assert np.array_equal(mm.token, tokens) and sim.check_invariants().counts.sum() == 0
