"""Every shipped configuration runs with zero invariant violations (at a small size)."""

import pytest

from conftest import run

CASES = [
    *[(f"workload={w}",) for w in ("zipf", "uniform", "sequential", "hotcold")],
    ("secondary.mode=pin",),
    ("secondary=none",),
    ("policies.swap.mode=clock",),
    ("policies.swap.young_op=clear_young",),
    ("policies=[swap,eager_release]",),
    ("secondary.mode=pin", "policies=[swap,eager_release]"),
    ("guest.count=2", "guest.memory_mib=32"),
    ("host.numa_nodes=2", "host.memory_mib=64", "guest.vcpu_nodes=[0,1]"),
    ("processes=[{name: hog, memory_mib: 16, node: 0, workload: {name: uniform, accesses: 100000}}]",),
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda c: " ".join(c))
def test_no_invariant_violations(overrides):
    sim, m = run(*overrides, "workload.accesses=200000")
    assert m["invariant_violations"] == 0, sim.violation_messages
    assert m["accesses"] > 0
