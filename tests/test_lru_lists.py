"""Two-list reclaim (``policies.swap.lists=2``, ``mmnsim.lru``): the inactive and the active anonymous LRU,
aging only the folios isolated from the inactive list's tail (folio_check_references), deactivation from the
active list (shrink_active_list), new folios inactive, refault activation (mm/workingset.c workingset_refault),
and a KVM fault marking its page accessed."""

import numpy as np
import pytest

from conftest import run, simulation
from mmnsim import (
    OperationError,
    inactive_is_low,
    lru_sizes,
    lru_stats,
    may_deactivate,
    referenced,
    shrink_active,
    shrink_inactive,
    split_huge_pages,
    swap_out,
)
from mmnsim.frames import LRU_ACTIVE, LRU_REFERENCED
from mmnsim.pagebits import P_HUGE, P_YOUNG
from mmnsim.swapdev import REG_NONRESIDENT_AGE, REG_WORKINGSET

# A process beside the guest, started at tick 2 (the validation's swap scenario, reduced).
HOG = "processes=[{name: hog, memory_mib: 32, node: 0, workload: {name: uniform, accesses: 150000, start_tick: 2}}]"
SCENARIO = ("guest.memory_mib=48", "guest.vcpus=2", "guest.thp=false", "host.memory_mib=64", "host.swap_mib=128",
            "workload.accesses=150000", "engine.accesses_per_tick=32768", HOG)  # fmt: skip


def flags(sim, frames) -> np.ndarray:
    return np.asarray(sim.host.ft.ref)[frames]


def process_only(*overrides: str):
    """A sim with one process (no secondary MMU) of 4 MiB, its pages touched once, their young bits then cleared,
    in a host with room."""
    sim = simulation("guest.memory_mib=4", "host.memory_mib=64", "workload.accesses=0", "secondary=none", *overrides)
    sim.run()
    mm = sim.mms[0]
    referenced(sim, mm.pte[mm.pte >= 0].astype(np.int64), "clear_young")
    return sim, mm


def test_new_folios_start_inactive_and_a_process_fault_marks_nothing():
    sim, mm = process_only()
    frames = mm.pte[mm.pte >= 0].astype(np.int64)
    assert frames.size > 0
    assert (flags(sim, frames) == 0).all()  # folio_add_lru: inactive, unreferenced
    sizes = lru_sizes(sim)
    assert sizes.active == 0 and sizes.inactive == frames.size


def test_a_referenced_folio_rotates_once_then_activates_and_an_old_one_is_reclaimed():
    sim, mm = process_only()
    frames = np.sort(mm.pte[:64].astype(np.int64))
    sim.run_client(mm, None, np.arange(32))  # pages 0..31 used again: young
    young = np.isin(frames, mm.pte[:32])
    done = shrink_inactive(sim, int(frames[0]), 64, sim.host.nframes)
    assert set(done.reclaim.tolist()) == set(frames[~young].tolist())  # not referenced: reclaim
    assert done.moved == 0  # referenced the first time: PG_referenced, kept inactive
    assert (flags(sim, frames[young]) == LRU_REFERENCED).all()
    assert done.scanned == 64
    sim.run_client(mm, None, np.arange(32))
    done = shrink_inactive(sim, int(frames[0]), 64, sim.host.nframes)
    assert done.moved == 32  # referenced with PG_referenced: activated
    assert (flags(sim, frames[young]) & LRU_ACTIVE).all()
    done = shrink_inactive(sim, int(frames[0]), 32, sim.host.nframes)  # the active folios are passed over
    assert np.array_equal(np.sort(done.reclaim), frames[~young]) and done.passed == 64 and done.scanned == 32


def test_shrink_active_deactivates_whether_referenced_or_not_and_asks_the_young_op():
    sim, mm = process_only()
    frames = np.sort(mm.pte[:16].astype(np.int64))
    for _ in range(2):
        sim.run_client(mm, None, np.arange(16))
        shrink_inactive(sim, int(frames[0]), 16, sim.host.nframes)
    assert (flags(sim, frames) & LRU_ACTIVE).all()
    sim.run_client(mm, None, np.arange(16))  # young again: an anonymous folio is deactivated all the same
    done = shrink_active(sim, int(frames[0]), 16, sim.host.nframes)
    assert done.moved == 16 and not (flags(sim, frames) & LRU_ACTIVE).any()
    assert not (np.asarray(mm.flags)[:16] & P_YOUNG).any()  # folio_referenced cleared them


def test_the_young_op_must_age():
    sim, _ = process_only()
    with pytest.raises(OperationError, match="test_young"):
        shrink_inactive(sim, 0, 8, 8, "test_young")


def test_a_kvm_fault_activates_the_page_it_faults_in():
    sim = simulation("guest.memory_mib=8", "host.memory_mib=64", "workload.accesses=0", "policies.swap.lists=2")
    sim.run()  # the guest's boot: every page faulted in through KVM (gup with FOLL_TOUCH, then the release)
    frames = sim.mms[0].pte[sim.mms[0].pte >= 0].astype(np.int64)
    assert (flags(sim, frames) & LRU_ACTIVE).all()
    sim1 = simulation("guest.memory_mib=8", "host.memory_mib=64", "workload.accesses=0", "policies.swap.lists=1")
    sim1.run()
    assert not np.asarray(sim1.host.ft.ref).any()  # one list: no LRU flags kept


def test_a_hot_page_that_refaults_is_activated_and_survives_the_next_rounds():
    sim, mm = process_only("host.swap_mib=64")
    hot = np.arange(8)
    lru_stats(sim)  # publishes the workingset size (0 active pages: only a refault at distance 0 activates)
    frames = mm.pte[hot].astype(np.int64)
    # Reclaim the hot pages (old: never used since their first touch), then make the active list large.
    got = shrink_inactive(sim, int(frames.min()), 4096, sim.host.nframes).reclaim
    swap_out(sim, got[np.isin(got, frames)])
    assert (mm.pte[hot] < -1).all()  # in swap
    sim.host._sw.reg[REG_WORKINGSET] = 1 << 20  # a large active list: every refault is within it
    age = int(sim.host.sw.reg[REG_NONRESIDENT_AGE])
    sim.run_client(mm, None, hot)  # the refaults
    new = mm.pte[hot].astype(np.int64)
    assert (new >= 0).all() and (flags(sim, new) & LRU_ACTIVE).all()
    assert int(sim.host.sw.reg[REG_NONRESIDENT_AGE]) == age + hot.size  # each activation ages the clock
    # The next rounds of the inactive list do not take them; one list's hand would have aged them.
    for _ in range(3):
        assert not np.isin(new, shrink_inactive(sim, 0, 4096, sim.host.nframes).reclaim).any()
    # A refault beyond the workingset starts inactive.
    swap_out(sim, new[:1])
    sim.host._sw.reg[REG_WORKINGSET] = 0
    sim.host._sw.reg[REG_NONRESIDENT_AGE] += 100
    sim.run_client(mm, None, hot[:1])
    assert flags(sim, mm.pte[hot[:1]].astype(np.int64))[0] & LRU_ACTIVE == 0


def test_a_plugin_cannot_write_the_lru_flags_or_the_workingset_clock():
    sim, _ = process_only()
    with pytest.raises(ValueError):
        sim.host.ft.ref[0] = LRU_ACTIVE
    with pytest.raises(ValueError):
        sim.host.sw.reg[REG_WORKINGSET] = 5


@pytest.mark.parametrize("memcg", [True, False])  # direct reclaim under a cgroup's limit; kswapd and watermarks
def test_two_lists_age_only_what_they_isolate(memcg):
    results = {}
    for lists in (1, 2):
        sim, m = run(*SCENARIO, f"host.memcg={str(memcg).lower()}", f"policies.swap.lists={lists}", small=False)
        assert m["swap_outs"] > 1000, lists
        results[lists] = m["young_pages_aged"] / m["swap_outs"]
        if lists == 2:
            assert lru_sizes(sim).active > 0
            assert int(sim.host.sw.reg[REG_NONRESIDENT_AGE]) >= m["swap_outs"]
    # One list's hand ages every candidate it passes; two lists age the isolated ones (and the deactivated).
    assert results[2] < 0.7 * results[1], results


def test_lists_is_checked():
    with pytest.raises(Exception, match=r"policies.swap.lists: must be 1 \(one list\) or 2"):
        simulation("policies.swap.lists=3")


def test_inactive_is_low_and_may_deactivate_follow_vmscan():
    assert inactive_is_low(100, 101) and not inactive_is_low(100, 100)  # below 1 GiB the ratio is 1
    gib4 = 4 << 18  # 4 GiB of pages: inactive_ratio = int_sqrt(40) = 6
    assert not inactive_is_low(gib4 // 7 + 1, gib4 - gib4 // 7 - 1)
    assert inactive_is_low(gib4 // 8, gib4 - gib4 // 8)
    assert may_deactivate(100, 50, True) and not may_deactivate(100, 50, False)  # refaults seen: deactivate


def test_a_split_thp_keeps_its_lru_flags_on_every_page():
    sim = simulation(
        "guest.memory_mib=8", "host.memory_mib=64", "workload.accesses=0", "host.thp=always", "policies.swap.lists=2"
    )
    sim.run()  # KVM faults the guest's THPs in: active
    mm = sim.mms[0]
    head = int(mm.pte[0])
    assert mm.flags[0] & P_HUGE and flags(sim, [head])[0] & LRU_ACTIVE
    split_huge_pages(sim, mm, np.array([0]))
    assert (flags(sim, np.arange(head, head + 512)) & LRU_ACTIVE).all()


def test_a_pinned_folio_met_on_the_inactive_list_is_activated_and_counts_toward_the_batch():
    # try_to_unmap fails on a folio that may be DMA-pinned, so shrink_folio_list activates it (activate_locked);
    # a batch is SWAP_CLUSTER_MAX folios met, pinned ones included (isolate_lru_folios), not 32 unpinned ones
    # found; shrink_active_list deactivates a pinned folio as any other.
    sim = simulation("guest.memory_mib=8", "host.memory_mib=64", "workload.accesses=0", "secondary.mode=pin",
                     "policies.swap.lists=2")  # fmt: skip
    sim.run()
    frames = np.sort(sim.mms[0].pte[sim.mms[0].pte >= 0].astype(np.int64))
    assert frames.size == 2048 and (np.asarray(sim.host.ft.pin)[frames] > 0).all()
    assert (flags(sim, frames) & LRU_ACTIVE).all()  # KVM's fault marked each accessed twice: active
    assert shrink_active(sim, int(frames[0]), frames.size, sim.host.nframes).moved == frames.size
    assert not (flags(sim, frames) & LRU_ACTIVE).any()
    done = shrink_inactive(sim, int(frames[0]), 32, sim.host.nframes)
    assert done.reclaim.size == 0 and done.scanned == 32
    met = (flags(sim, frames) & LRU_ACTIVE) != 0
    assert met.sum() == 32 and met[np.isin(frames, frames[:32])].all()


def test_reclaim_reads_the_lists_statistics_as_of_their_last_flush(monkeypatch):
    # mm/memcontrol.c flush_memcg_stats_dwork folds the statistics every 2 s; reclaim reads them
    # (prepare_scan_control -> mem_cgroup_flush_stats_ratelimited), the lists themselves stay exact.
    sim, mm = process_only("policies.swap.lists=2")
    first = sim.host._stats_phase * 2e9  # the flusher's first run, after the run began
    now = [first - 1.0]
    monkeypatch.setattr(sim, "now_ns", lambda: now[0])
    exact = lru_sizes(sim)
    assert exact.inactive > 0 and tuple(lru_stats(sim)) == (0, 0, 0)  # a new cgroup's: nothing counted yet
    now[0] = first + 1.0
    assert lru_stats(sim) == exact
    frames = mm.pte[mm.pte >= 0].astype(np.int64)
    shrink_inactive(sim, int(frames.min()), 64, sim.host.nframes)  # nothing referenced: none activated
    sim.run_client(mm, None, np.arange(16))
    shrink_inactive(sim, int(frames.min()), 4096, sim.host.nframes)  # referenced once: PG_referenced, kept
    sim.run_client(mm, None, np.arange(16))
    shrink_inactive(sim, int(frames.min()), 4096, sim.host.nframes)  # twice: activated
    moved = lru_sizes(sim)
    assert moved.active == 16 and moved != exact
    now[0] = first + 1.99e9
    assert lru_stats(sim) == exact  # until the next flush
    now[0] = first + 2e9 + 1.0
    assert lru_stats(sim) == moved
    with_exact = simulation("guest.memory_mib=4", "host.memory_mib=64", "workload.accesses=0", "secondary=none",
                            "policies.swap.lists=2", "kernel='6.1'")  # fmt: skip
    with_exact.run()
    assert with_exact.kernel.lru_stats_flush_ms == 0 and lru_stats(with_exact) == lru_sizes(with_exact)


# Validation row 27: a 1.5x guest booting alone into a cgroup's limit (its pages start active: KVM marks them
# accessed), with the statistics not yet flushed, reclaim sees no active pages and deactivates nothing, and
# finding the inactive list empty it never sets skipped_deactivate (shrink_lruvec's loop runs on
# nr[LRU_INACTIVE_ANON]): no force_deactivate, and the cgroup's OOM killer kills the guest.
BOOT = ("guest.memory_mib=24", "guest.vcpus=2", "guest.thp=false", "host.memory_mib=16", "host.memcg=true",
        "host.swap_mib=64", "workload.accesses=20000", "engine.accesses_per_tick=16384",
        "policies.swap.lists=2")  # fmt: skip


def test_a_guest_filling_its_limit_before_the_statistics_flush_is_oom_killed():
    late = "kernel.lru_stats_flush_ms=600000"  # a first flush minutes away, whatever the seed's phase
    sim, m = run(*BOOT, late)
    assert m["oom_kills"] == 1 and m["swap_outs"] == 0, m
    assert tuple(lru_stats(sim))[:2] == (0, 0)
    _, fresh = run(*BOOT, "kernel.lru_stats_flush_ms=0")  # exact statistics: the inactive list is low
    assert fresh["oom_kills"] == 0 and fresh["swap_outs"] > 2048, fresh
    # A flush before the boot reaches the limit shows the active pages: reclaim deactivates and the guest lives.
    _, flushed = run(*BOOT, "kernel.lru_stats_flush_ms=1")
    assert flushed["oom_kills"] == 0 and flushed["swap_outs"] > 2048, flushed


def test_reclaim_mid_batch_reads_a_clock_inside_its_tick(monkeypatch):
    # Simulation.now_ns, which the statistics' flusher runs on: a reclaim in tick k reads a time between the
    # end of tick k - 1 and the end of tick k, and the time never goes back.
    import mmnsim.plugins.swap as swap_plugin

    calls = []
    read = swap_plugin.lru_stats

    def spy(sim):
        calls.append((sim.tick, sim.now_ns()))
        return read(sim)

    monkeypatch.setattr(swap_plugin, "lru_stats", spy)
    sim, m = run(*SCENARIO, "host.memcg=true", "policies.swap.lists=2")
    ends = {row["tick"]: row["sim_time_ns"] for row in sim._timeseries.to_list()}
    assert len(calls) > 100 and len(ends) == m["ticks"]
    assert all(b >= a for (_, a), (_, b) in zip(calls, calls[1:], strict=False))
    assert all(ends.get(tick - 1, 0.0) <= now <= ends[tick] for tick, now in calls)
    assert any(a[0] == b[0] and b[1] > a[1] for a, b in zip(calls, calls[1:], strict=False))  # inside a tick too


def test_a_monitor_reading_memory_stat_each_tick_flushes_the_statistics():
    # host.read_stats_each_tick: the twin's per-tick read of memory.stat (memcg1_stat_format ->
    # mem_cgroup_flush_stats) leaves the statistics as the lists were at the tick's end, whatever the flusher.
    late = "kernel.lru_stats_flush_ms=600000"  # the periodic flusher minutes away
    sim = simulation(*SCENARIO, "host.memcg=true", "policies.swap.lists=2", late, "host.read_stats_each_tick=true")
    sim.step()
    sim.step()
    assert tuple(sim.host._lru_stats[:2]) == tuple(lru_sizes(sim))[:2] and lru_sizes(sim).active > 0
    unread = simulation(*SCENARIO, "host.memcg=true", "policies.swap.lists=2", late)
    unread.step()
    unread.step()
    assert tuple(unread.host._lru_stats) == (0, 0, 0)
