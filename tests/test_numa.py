"""NUMA hosts and automatic NUMA balancing: the seed's third claim, pinned pages cannot migrate."""

import numpy as np
import polars as pl
import pytest

from conftest import run
from mmnsim import ConfigError

MOVED = ("+scenario=numa_moved_vcpus", "workload.accesses=24000000")


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
    sim, m = run(f"+scenario={scenario}", "workload.accesses=10000000", small=False)
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
