"""Reclaim: the LRU approximation uses the young notifiers, skips pinned pages, keeps the watermarks;
and the allocator keeps free memory in whole pageblocks."""

import numpy as np

from conftest import run, simulation
from mmnsim import referenced, swap_out
from mmnsim.frames import FREEBLK, N_ON_LIST, NFREE, PAGEBLOCK_PAGES, alloc_frame, free_frame


def test_pages_kvm_saw_used_get_a_second_chance_and_cold_ones_go():
    sim = simulation("workload.accesses=0", "guest.memory_mib=8", "host.memory_mib=64")
    sim.run()
    tenant = sim.tenants[0]
    kvm = tenant.secondary
    frames = tenant.mm.pte[:200].astype(np.int64)
    referenced(sim, frames)  # age everything once: clears the young bits the boot set
    sim.run_client(tenant.mm, kvm, np.arange(100))  # the guest uses the first 100 pages again
    young = referenced(sim, frames, "clear_young")
    assert young[:100].all() and not young[100:].any()
    assert kvm.metrics["young_pages_aged"] == 400
    assert swap_out(sim, frames[100:]) == 100
    assert (kvm.spte[100:200] < 0).all() and (kvm.spte[:100] >= 0).all()
    assert sim.check_invariants().counts.sum() == 0


def test_kswapd_keeps_memory_above_min_and_direct_reclaim_is_rare():
    sim, m = run("workload.accesses=1000000")
    host = sim.host
    assert m["kswapd_wakeups"] > 0 and m["swap_outs"] > 0
    assert (host.ft.node[:, NFREE] > host.watermarks[:, 0]).all()
    assert m["direct_reclaims"] == 0 and m["oom_events"] == 0


def test_pinned_pages_are_never_reclaimed_and_memory_runs_out_instead():
    sim, m = run("secondary.mode=pin", "workload.accesses=200000", "host.oom=fail")
    assert m["swap_outs"] == 0 and m["pin_skipped"] > 0
    assert m["oom_events"] > 0 and m["alloc_failures"] > 0
    assert m["invariant_violations"] == 0


def test_without_a_reclaim_policy_allocations_fail_but_the_run_goes_on():
    sim, m = run("policies=[]", "workload.accesses=100000", "host.oom=fail")
    assert m["swap_outs"] == 0 and m["oom_events"] > 0 and m["accesses"] > 0
    assert m["invariant_violations"] == 0


def test_allocator_splits_a_free_pageblock_only_when_no_partial_one_is_left():
    sim = simulation("workload.accesses=0", "workload.boot=false", "host.memory_mib=8")  # 4 pageblocks
    ft = sim.host._ft  # the framework's writable table: this test calls the allocator kernel
    a = [alloc_frame(ft.node, ft.lists, ft.pb, ft.bits, ft.key, ft.ref, 0, k) for k in range(3)]
    assert a == [0, 1, 2] and ft.node[0, N_ON_LIST + FREEBLK] == 3
    free_frame(ft.node, ft.lists, ft.pb, ft.bits, ft.key, ft.token, 1)
    assert alloc_frame(ft.node, ft.lists, ft.pb, ft.bits, ft.key, ft.ref, 0, 9) == 1  # reuses the hole
    for f in (0, 1, 2):
        free_frame(ft.node, ft.lists, ft.pb, ft.bits, ft.key, ft.token, f)
    assert ft.node[0, N_ON_LIST + FREEBLK] == 4 and ft.node[0, NFREE] == 4 * PAGEBLOCK_PAGES  # merged back


def test_a_memory_cgroup_host_reclaims_directly_in_the_charging_thread_without_kswapd():
    sim, m = run("host.memcg=true", "engine.race_window=0")
    assert m["swap_outs"] > 0 and m["kswapd_wakeups"] == 0 and m["direct_reclaims"] > 0
    # try_to_free_mem_cgroup_pages reclaims SWAP_CLUSTER_MAX at a time, once the limit is reached
    assert m["swap_outs"] >= 32 * m["direct_reclaims"] * 0.9 and m["invariant_violations"] == 0
    assert sim.host.watermark() == (0, 0, 0)
    _, watermarks = run("engine.race_window=0")
    assert watermarks["kswapd_wakeups"] > 0 and watermarks["direct_reclaims"] == 0
