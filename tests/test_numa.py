"""NUMA hosts and automatic NUMA balancing: the seed's third claim, pinned pages cannot migrate."""

import numpy as np
import polars as pl
import pytest

from conftest import run, simulation
from mmnsim import ConfigError

# Scans every 250 ms (the kernel: 1 s), so that 24 M accesses (about 1.8 s simulated) see several passes.
MOVED = (
    "+scenario=numa_moved_vcpus",
    "workload.accesses=24000000",
    "policies.numa.scan_delay_ms=250",
    "policies.numa.scan_period_min_ms=250",
)


def remote_per_tick(sim) -> pl.DataFrame:
    ts = pl.DataFrame(sim.timeseries)
    return ts.select(
        "tick",
        (pl.col("sim_time_ns") / 1e9).alias("seconds"),
        (pl.col("remote_accesses").diff() / pl.col("accesses").diff()).alias("remote"),
    )


@pytest.fixture(scope="module")
def moved():
    return {mode: run(*MOVED, f"secondary.mode={mode}", small=False) for mode in ("notifier", "pin")}


def test_notifier_mode_brings_the_memory_to_the_moved_vcpus(moved):
    sim, m = moved["notifier"]
    per_tick = remote_per_tick(sim)
    after_move = per_tick.filter(pl.col("tick") == 2)["remote"][0]  # the tick the vCPUs moved
    assert after_move > 0.5  # the vCPUs moved away from their memory
    settled = per_tick.filter(pl.col("remote") < 0.1)["seconds"].min()
    assert settled is not None and settled < 2.0  # within two simulated seconds
    assert per_tick["remote"][-5:].max() < 0.1
    assert m["pages_migrated"] >= sim.mms[0].npages * 0.9 and m["migrations_refused"] == 0
    # The cost side: the scan's PROT_NONE made KVM zap and flush; the guest took hinting faults.
    assert m["numa_hint_faults"] > 0 and m["numa_pte_updates"] > 0
    assert m["pages_zapped"] > 0 and m["tlb_flushes"] > 0
    # As the kernel raises them: change_prot_numa's PROTECTION_VMA, try_to_migrate_one's CLEAR; no MIGRATE
    # (device migration only) in a run without devices.
    assert m["invalidations_protection_vma"] > 0 and m["invalidations_clear"] > 0
    assert m["invalidations_migrate"] == 0
    assert m["invariant_violations"] == 0  # content tokens survived every migration


def test_pin_mode_stays_remote_and_counts_refused_migrations(moved):
    sim, m = moved["pin"]
    per_tick = remote_per_tick(sim)
    assert per_tick["remote"][3:].min() > 0.9
    assert m["remote_access_fraction"] > 0.9
    assert m["pages_migrated"] == 0 and m["migrations_refused"] > 0
    assert m["invariant_violations"] == 0
    # Remote memory costs twice local (SLIT 20 vs 10): the effective access time shows it.
    notifier = moved["notifier"][1]
    assert m["effective_access_ns"] > 1.8 * 80 > 1.2 * notifier["effective_access_ns"]


def test_skipping_pinned_pages_spares_the_hinting_faults_but_not_the_notifier():
    _, plain = run(*MOVED, "secondary.mode=pin", "workload.accesses=6000000", small=False)
    _, skip = run(*MOVED, "secondary.mode=pin", "workload.accesses=6000000", "policies.numa.skip_pinned=true",
                  small=False)  # fmt: skip
    assert skip["numa_pte_updates"] == 0 < plain["numa_pte_updates"]
    assert skip["migrations_refused"] < plain["migrations_refused"]
    assert skip["numa_scans"] == plain["numa_scans"]


@pytest.mark.parametrize("scenario", ["numa_wrong_node", "numa_large_guest"])
def test_the_other_scenarios_run_clean(scenario):
    sim, m = run(f"+scenario={scenario}", "workload.accesses=10000000", "policies.numa.scan_delay_ms=250", small=False)
    assert m["invariant_violations"] == 0 and m["numa_hint_faults"] > 0
    if scenario == "numa_large_guest":
        used = [np.count_nonzero(sim.host.ft.key[sim.host.ft.pb[:, 2].repeat(512) == n] >= 0) for n in (0, 1)]
        assert used[1] > 0  # the guest spilled onto the other node


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("host.numa_nodes=2", "guest.vcpu_nodes=[0,2]"), "guest.vcpu_nodes: [0, 2] names a node outside 0..1"),
        (("host.numa_nodes=2", "host.distance=[[10,20,30]]"), "host.distance: must be a 2x2 matrix"),
        (("host.numa_nodes=2", "host.distance=[[10,20],[30,10]]"), "host.distance: must be symmetric"),
        (("host.numa_nodes=2", "host.distance=[[10,20],[20,12]]"), "host.distance: diagonal must be 10"),
        (
            ("policies=[schedule]", "policies.schedule.events=[{at_tick: 1, tenant: guest0, vcpu_nodes: [3]}]"),
            "policies.schedule.events[0].vcpu_nodes: [3] must name nodes in 0..0",
        ),
    ],
)
def test_bad_numa_input_names_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        run(*overrides)
    assert message in str(err.value)


# -- the kernel's rules, one at a time (mm/memory.c do_numa_page, kernel/sched/fair.c) --


def _numa_sim(*extra):
    """A 16 MiB guest whose memory sits on node 0 of a two-node host while its vCPU runs on node 1; NUMA
    balancing on, nothing run yet."""
    sim = simulation("host.numa_nodes=2", "host.memory_mib=256", "guest.memory_mib=16", "guest.vcpu_nodes=[1]",
                     "workload.accesses=0", "policies=[numa]", *extra, small=False)  # fmt: skip
    mm = sim.mms[0]
    mm.access(np.arange(mm.npages), np.ones(mm.npages, dtype=bool))  # the VMM's thread, on node 0, touches it all
    return sim, mm, next(p for p in sim.policies if p.name == "numa")


def _fault(sim, mm, pages, vcpu: bool = True):
    """Make ``pages`` PROT_NONE (change_prot_numa) and touch them: from the vCPU (node 1) or the VMM (node 0)."""
    for p in pages:
        mm.change_prot_numa(p, p + 1, skip_pinned=False)
    if vcpu:
        sim.run_client(mm, sim.secondaries[0], np.asarray(pages))
    else:
        mm.access(np.asarray(pages))


def test_two_stage_filter_migrates_a_page_only_on_a_second_fault_from_the_same_node():
    sim, mm, numa = _numa_sim()
    numa.faults.set_passes(mm.index, 5)  # past the early passes
    _fault(sim, mm, [1, 2, 3])
    assert sim.counter("pages_migrated") == 0  # a first fault only records the node
    _fault(sim, mm, [1, 2])
    _fault(sim, mm, [3], vcpu=False)  # local: page 3's last node is now 0
    _fault(sim, mm, [3])
    assert sim.counter("pages_migrated") == 2  # pages 1, 2: node 1 twice in a row; page 3 bounced
    assert sim.host.nodes_of(mm.pte[[1, 2, 3]]).tolist() == [1, 1, 0]
    assert numa.faults.filtered() == 4 and not sim.check_invariants()  # three first faults, then page 3


def test_the_page_moves_in_the_fault_and_the_kvm_fault_retries_onto_the_new_frame():
    sim, mm, numa = _numa_sim()
    kvm = sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(8))  # KVM maps pages 0..7 on node 0
    zapped = sim.metrics()["pages_zapped"]
    retries = sim.counter("fault_retries")
    _fault(sim, mm, np.arange(8))  # PROTECTION_VMA zaps the sptes; the hinting faults migrate at once (early)
    assert sim.counter("pages_migrated") == 8 and (sim.host.nodes_of(mm.pte[:8]) == 1).all()
    assert (kvm.spte[:8] == mm.pte[:8]).all()  # the retried KVM fault mapped the new frames
    assert sim.counter("fault_retries") - retries == 8  # each fault saw the migration's CLEAR move the sequence
    assert sim.metrics()["pages_zapped"] - zapped == 8  # the scan's zap only: nothing left for the migration
    assert sim.counter("invalidations_clear") >= 8 and not sim.check_invariants()
    assert sim.actors.who_changed(mm.base + 3).startswith("the NUMA hinting fault (do_numa_page")


def test_early_in_a_process_life_a_first_fault_migrates_at_once_and_nothing_limits_the_rate():
    sim, mm, numa = _numa_sim()
    mm.change_prot_numa(0, mm.npages, skip_pinned=False)
    sim.run_client(mm, sim.secondaries[0], np.arange(mm.npages))  # 16 MiB at once: the old 1280 MB/s limit: ~0
    assert sim.counter("pages_migrated") == mm.npages


def test_scan_period_follows_update_task_scan_period():
    sim, mm, numa = _numa_sim()
    scan = numa.scans[mm.index]
    stats = numa.faults.stats[mm.index]
    lo, hi = numa._period_bounds(mm)
    assert (lo, hi) == (1000, 60000)  # one 256 MB window: the sysctls themselves

    def update(local: int, remote: int, failed: int = 0) -> float:
        stats[1:4] = local, remote, failed  # LOCAL, REMOTE, FAILED
        numa._update_period(mm, scan)
        return scan.period_ms

    scan.period_ms = 1000
    assert update(0, 50) == 2000  # no local fault: scan slower
    # Every fault private (one task): ps_ratio 10 takes the first branch, three slots slower, whatever the
    # locality: the kernel reads private faults as memory already the task's own.
    assert update(30, 70) == 2000 + 3 * 200
    assert update(90, 10) == 2600 + 3 * 260
    assert update(100, 0, failed=1) == 2 * 3380  # a failed migration: scan slower
    assert tuple(stats[1:4]) == (0, 0, 0)  # read and cleared
