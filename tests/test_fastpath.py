"""The compiled reclaim path (``mmnsim.fastpath``) does what the notifier chain does, to the last metric; and it
serves only the class that declares it, so a subclass that changes a hook is heard through the chain."""

import numpy as np
import pytest

from conftest import simulation
from mmnsim import Simulation
from mmnsim.plugins.kvm import KVM

SCENARIOS = {
    "core": ("workload.accesses=400000",),
    "clear_young": ("workload.accesses=400000", "policies.swap.young_op=clear_young"),
    "flush_on_age": ("workload.accesses=400000", "secondary.flush_on_age=true"),
    "race_windows": ("workload.accesses=400000", "engine.race_window=0.01"),
    "two_guests": ("workload.accesses=200000", "guest.count=2", "host.memory_mib=48"),
    "shadow_2008": ("workload.accesses=200000", "kernel='2008'", "secondary.paging=shadow"),
    "thp": ("workload.accesses=400000", "host.thp=always"),
    # race windows on THP-backed guest RAM under a cgroup limit, two lists and a swap file (validation's thp
    # scenario); the LRU statistics exact (with the 2 s flusher the guest is OOM-killed at boot: row 27)
    "thp_race_windows": (
        "workload.accesses=300000",
        "host.thp=always",
        "host.memcg=true",
        "host.swap_device=file",
        "policies.swap.lists=2",
        "secondary.paging=shadow",
        "engine.race_window=0.01",
        "kernel.lru_stats_flush_ms=0",
    ),
    # two lists under a cgroup limit, a process pushing the guest out from tick 2, the LRU statistics flushed
    # every 5 simulated ms: on the clock both paths estimate mid-batch (Simulation.now_ns)
    "stale_lru_stats": (
        "workload.accesses=400000",
        "guest.memory_mib=32",
        "host.memcg=true",
        "policies.swap.lists=2",
        "kernel.lru_stats_flush_ms=5",
        "processes=[{name: hog, memory_mib: 32, node: 0, workload: {name: uniform, accesses: 200000, start_tick: 2}}]",
    ),
    "memcg": ("workload.accesses=400000", "host.memcg=true"),
    "numa": (
        "+scenario=numa_moved_vcpus",
        "workload.accesses=3000000",
        "guest.memory_mib=64",
        "host.memory_mib=96",
        "policies.numa.scan_delay_ms=5",
        "policies.numa.scan_period_min_ms=5",
    ),
}


def _metrics(*overrides, fast: bool) -> dict:
    sim = simulation(*overrides)
    sim.fast.enabled = fast
    m = sim.run(teardown=True)
    m.pop("wall_seconds")
    return m


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_compiled_path_reports_every_metric_as_the_chain_does(name):
    fast = _metrics(*SCENARIOS[name], fast=True)
    slow = _metrics(*SCENARIOS[name], fast=False)
    assert fast["invalidations"] > 0 and (fast["numa_pages_migrated"] if name == "numa" else fast["swap_outs"]) > 0
    differ = {k: (fast.get(k), slow.get(k)) for k in fast.keys() | slow.keys() if fast.get(k) != slow.get(k)}
    assert not differ


def test_a_reclaim_round_is_one_compiled_call_where_the_chain_is_served(monkeypatch):
    """shrink_batch, the swap policy's round: the scan, the young op and the choice of the old folios in one
    compiled call where every subscriber is served (the comparison above holds it to the calls' results); an
    old THP first hands the rest back to the calls (folio_pages counts its 512 pages)."""
    import mmnsim.reclaim as reclaim

    rounds = {"compiled": 0, "thp": 0}
    compiled = reclaim._scan_age_select

    def counted(*args):
        compiled(*args)
        rounds["compiled"] += 1
        rounds["thp"] += int(args[-1][3] < 0)

    monkeypatch.setattr(reclaim, "_scan_age_select", counted)
    m = _metrics(*SCENARIOS["core"], fast=True)
    assert rounds["compiled"] > 10 and rounds["thp"] == 0 and m["swap_outs"] > 0
    _metrics(*SCENARIOS["thp"], fast=True)
    assert rounds["thp"] > 0
    rounds["compiled"] = 0
    _metrics(*SCENARIOS["two_guests"], fast=True)  # two mms: the calls
    assert rounds["compiled"] == 0


def test_only_the_declaring_class_is_served_and_only_when_every_subscriber_is():
    sim = simulation("workload.accesses=0", "workload.boot=false")
    mm, kvm = sim.mms[0], sim.secondaries[0]
    ops = ("invalidate_range_start", "invalidate_range_end")
    assert type(kvm) is KVM and kvm.serves_fast(ops) and sim.fast.subscribers(mm, ops).tolist() == [kvm.index]

    class Tweaked(KVM):  # any subclass might change a hook or a method a hook calls
        pass

    kvm.__class__ = Tweaked
    assert Tweaked.fast_ops and not kvm.serves_fast(ops)  # it inherits the declaration but is not served by it
    sim.fast.changed()
    assert sim.fast.subscribers(mm, ops) is None and sim.fast.young_table("clear_flush_young") is None
    kvm.__class__ = KVM
    kvm.invalidate_range_start = lambda ranges: None  # an instance-level override too
    assert not kvm.serves_fast(ops)


def test_a_young_lie_is_caught_on_the_compiled_path_too():
    sim = simulation("workload.accesses=0", "workload.boot=false", "guest.memory_mib=16", "host.memory_mib=64")
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64))
    from mmnsim import referenced

    frames = mm.pte[:128].astype(np.int64)
    frames = frames[frames >= 0]
    assert sim.fast.young_table("clear_flush_young") is not None
    assert referenced(sim, frames).all() and not sim.violation_messages  # accessed: honest
    kvm.sflags[:64] |= 1  # S_ACCESSED set by the plugin itself: nothing accessed the pages
    assert referenced(sim, frames).all()
    message = sim.violation_messages[0]
    assert "answered clear_flush_young young for 64 ranges none of its entries was accessed in" in message
    assert "Culprit: kvm[guest0] in clear_flush_young" in message


def test_race_windows_reclaim_in_the_kernel_when_the_chain_is_served(monkeypatch):
    calls = []
    original = Simulation._race_window
    monkeypatch.setattr(Simulation, "_race_window", lambda self, key: calls.append(key) or original(self, key))
    fast = simulation(*SCENARIOS["race_windows"])
    m = fast.run()
    assert m["race_windows"] > 0 and not calls  # every window's reclaim ran inside the access kernel
    slow = simulation(*SCENARIOS["race_windows"])
    slow.fast.enabled = False
    assert slow.run()["race_windows"] == m["race_windows"] == len(calls)  # ... and the chain's path, through Python
