"""Broken plugins and a failing swap device: every injected fault is caught and reported, nothing is lost.

The broken secondary MMUs are ``plugins/faulty.py`` (``secondary=faulty secondary.fault=NAME``); each case
checks the report names the plugin, the invariant and the page or frame, and that the same run without
the fault is clean (so a check that fires on anything would fail here too).
"""

import logging
import re

import numpy as np
import pytest

from conftest import run, simulation
from mmnsim import Event, NotifierRange, PluginError
from mmnsim.invariants import KINDS

LABEL = "faulty[guest0]"


@pytest.mark.parametrize(
    "fault, mode, kinds, words",
    [
        ("none", "notifier", set(), ()),
        # Caught the moment the hook returns with entries left in its ranges, naming the plugin and the op.
        (
            "ignore_invalidate",
            "notifier",
            {"coherence", "isolation"},
            (
                "returned from invalidate_range_start",
                "still mapping",
                "Culprit: faulty[guest0] in invalidate_range_start",
            ),
        ),
        (
            "map_in_window",
            "notifier",
            {"coherence", "isolation"},
            (
                "returned from invalidate_range_start",
                "still mapping",
                "Culprit: faulty[guest0] in invalidate_range_start",
            ),
        ),
        ("keep_pins", "pin", {"coherence"}, ("which only a pin keeps alive",)),
        ("young_all", "notifier", {"accessed"}, ("answered clear_flush_young young", "first: pages [")),
        ("young_none", "notifier", {"accessed"}, ("answered clear_flush_young not young", "first: page")),
        # A driver that zaps later than it returns: at invalidate_range_end (after the pages were freed), or
        # at its next host_tick (before any end-of-tick check could see the entries): caught at the return.
        (
            "defer_unmap",
            "notifier",
            {"coherence", "isolation"},
            (
                "returned from invalidate_range_start",
                "still mapping",
                "Culprit: faulty[guest0] in invalidate_range_start",
            ),
        ),
        (
            "keep_until_tick",
            "notifier",
            {"coherence", "isolation"},
            (
                "returned from invalidate_range_start",
                "still mapping",
                "Culprit: faulty[guest0] in invalidate_range_start",
            ),
        ),
        # Caught the moment the fault that slept installs the frame it resolved before the host reclaimed it.
        (
            "no_seq_bump",
            "notifier",
            {"coherence", "isolation"},
            ("installed frame", "after its fault slept", "race window", "Culprit: faulty[guest0]"),
        ),
    ],
)
def test_a_broken_secondary_mmu_is_caught_by_the_invariant_it_breaks(fault, mode, kinds, words):
    # Race windows fifty times as often as by default: these runs are small, and no_seq_bump shows only there.
    sim = simulation(
        "secondary=faulty", f"secondary.fault={fault}", f"secondary.mode={mode}", "engine.race_window=0.01"
    )
    m = sim.run(teardown=True)
    found = {k for k in KINDS if m[f"{k}_violations"]}
    if not kinds:
        assert not found, sim.violation_messages[:3]
        return
    # The broken contract is reported first, naming the plugin; what follows from it (a write through a
    # stale entry is lost: integrity) may be reported too.
    assert found & kinds and found <= kinds | {"integrity"}, (found, sim.violation_messages[:3])
    first = re.sub(r"^\[[^\]]*\] ", "", sim.violation_messages[0])  # the end-of-run check's heading
    assert first.split(":")[0] in kinds and LABEL in first and all(w in first for w in words), first


@pytest.mark.parametrize("fault", ["none", "no_set_seq"])
def test_an_interval_subscriber_that_never_sets_its_sequence_is_caught_in_race_windows(fault):
    sim = simulation("secondary=faulty_odp", f"secondary.fault={fault}", "engine.race_window=0.01")
    m = sim.run()
    assert m["race_windows"] > 0
    if fault == "none":
        assert m["invariant_violations"] == 0 and m["fault_retries"] > 0, sim.violation_messages[:3]
        return
    assert m["coherence_violations"] + m["isolation_violations"] > 0
    first = sim.violation_messages[0]
    assert "faulty_odp[guest0] installed frame" in first and "after its fault slept" in first, first
    assert "Culprit: faulty_odp[guest0] (its invalidation must move the sequence" in first, first


def test_a_plugin_raising_in_a_hook_stops_the_run_naming_it_and_the_op():
    sim = simulation("secondary=faulty", "secondary.fault=raise_in_hook")
    with pytest.raises(PluginError, match=r"'faulty\[guest0\]' raised in invalidate_range_start: RuntimeError"):
        sim.run()


def test_a_refused_non_blockable_invalidation_is_counted_and_reported_and_leaves_the_pages(caplog):
    sim = simulation("secondary=faulty_odp", "workload.accesses=0", "workload.boot=false")
    mm = sim.tenants[0].mm
    dev = sim.secondaries[0]
    dev.populate(0, 64)
    done = []
    with caplog.at_level(logging.WARNING, logger="mmnsim"):
        ok = mm.invalidate(NotifierRange(mm, np.array([0]), np.array([64]), Event.UNMAP, blockable=False),
                           lambda: done.append(1))  # fmt: skip
    assert not ok and not done and sim.counter("invalidations_refused") == 1
    assert (
        "secondary MMU 'faulty_odp[guest0]' refused a non-blockable invalidation (UNMAP, pages [0, 64)" in caplog.text
    )
    assert (dev.spte[:64] >= 0).all()  # nothing was torn down: the caller gives up, as the OOM reaper does
    ok = mm.invalidate(NotifierRange(mm, np.array([0]), np.array([64]), Event.UNMAP), lambda: done.append(1))
    assert ok and done and (dev.spte[:64] < 0).all()  # a blockable one goes through
    assert not sim.check_invariants()


@pytest.mark.parametrize("reclaim", ["policies.swap.mode=lru", "policies.swap.mode=clock"])
def test_failing_swap_writes_keep_the_page_resident_and_lose_nothing(reclaim):
    sim, m = run("host.swap_write_error_rate=0.3", reclaim)
    assert m["swap_write_errors"] > 0 and m["swap_outs"] > 0
    assert m["invariant_violations"] == 0  # every page's content is in its frame or its slot
    assert m["swap_used"] == m["swap_outs"] - m["swap_ins"]  # a failed write holds no slot


def test_failing_swap_reads_fail_the_access_keep_the_page_in_swap_and_lose_nothing():
    sim, m = run("host.swap_read_error_rate=0.3")
    assert m["swap_read_errors"] > 0 and m["swap_ins"] > 0 and m["invariant_violations"] == 0
    _, again = run("host.swap_read_error_rate=0.3")
    assert again["swap_read_errors"] == m["swap_read_errors"]  # the errors are part of the seeded run
    _, clean = run()
    assert clean["swap_read_errors"] == clean["swap_write_errors"] == 0


def test_a_subscriber_that_tells_the_oom_reaper_done_without_zapping_is_caught_at_the_call():
    hog = "processes=[{name: hog, memory_mib: 8, node: 0, workload: {name: uniform, accesses: 3000000}}]"
    sim = simulation("secondary=faulty", "secondary.fault=ignore_nonblockable", "host.swap_mib=0",
                     "guest.memory_mib=64", "host.memory_mib=48", hog)  # fmt: skip
    m = sim.run(teardown=True)
    assert m["oom_kills"] == 1 and m["coherence_violations"] > 0
    reaper = [v for v in sim.violation_messages if "the OOM reaper" in v]
    assert reaper and "returned from invalidate_range_start (UNMAP of pages [0, " in reaper[0], sim.violation_messages
    assert "Culprit: faulty[guest0] in invalidate_range_start" in reaper[0]
    clean = simulation("secondary=faulty", "secondary.fault=none", "host.swap_mib=0", "guest.memory_mib=64",
                       "host.memory_mib=48", hog).run(teardown=True)  # fmt: skip
    assert clean["oom_kills"] == 1 and clean["invariant_violations"] == 0


@pytest.mark.parametrize("fault", ["none", "test_young_clears"])
def test_test_young_that_ages_is_caught_at_the_call(fault):
    sim = simulation("secondary=faulty", f"secondary.fault={fault}", "workload.accesses=0", "workload.boot=false",
                     "guest.memory_mib=16", "host.memory_mib=64")  # fmt: skip
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64))
    young = mm.chain.young("test_young", np.arange(64), np.arange(1, 65))
    assert young.all()  # the answer is right either way: it is the bits it leaves that are checked
    again = mm.chain.young("test_young", np.arange(64), np.arange(1, 65))
    if fault == "none":
        assert again.all() and not sim.violation_messages
        return
    assert sim.metrics()["accessed_violations"] >= 64
    first = sim.violation_messages[0]
    assert first.startswith("accessed: faulty[guest0] changed the accessed bits of 64 pages in test_young"), first
    assert "Culprit: faulty[guest0] in test_young" in first
