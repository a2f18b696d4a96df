"""The exact CLOCK reclaim mode gives the textbook algorithm's fault counts, checked against an
independent implementation: libCacheSim's Clock, on the same page trace and capacity."""

import numpy as np
import pytest

from conftest import simulation

lcs = pytest.importorskip("libcachesim")

PAGES = 8192  # the trace's address space: 32 MiB


def trace(seed: int, n: int) -> np.ndarray:
    """A page trace with reuse at several distances: skewed random, scans, and tight loops."""
    rng = np.random.default_rng(seed)
    parts = []
    while sum(p.size for p in parts) < n:
        kind = rng.integers(3)
        if kind == 0:
            parts.append((rng.zipf(1.3, 5000) * 37) % PAGES)
        elif kind == 1:
            start = rng.integers(PAGES)
            parts.append((start + np.arange(rng.integers(500, 4000))) % PAGES)
        else:
            loop = rng.integers(0, PAGES, rng.integers(50, 900))
            parts.append(np.tile(loop, 4))
    return np.concatenate(parts)[:n].astype(np.int64)


def libcachesim_misses(pages: np.ndarray, capacity: int, tmp_path) -> int:
    path = tmp_path / "trace.bin"
    pages.astype("<u8").tofile(path)  # libCacheSim's "valpin" layout: raw little-endian uint64
    reader = lcs.TraceReader(str(path), lcs.TraceType.VALPIN_TRACE, lcs.ReaderInitParam(ignore_obj_size=True))
    miss_ratio, _ = lcs.Clock(cache_size=capacity).process_trace(reader)
    return round(miss_ratio * pages.size)


def simulated_faults(pages: np.ndarray, capacity_mib: int, secondary: str) -> tuple[int, dict]:
    sim = simulation(
        f"host.memory_mib={capacity_mib}",
        f"guest.memory_mib={PAGES // 256}",
        "host.swap_mib=64",
        f"secondary={secondary}",
        "policies.swap.mode=clock",
        "workload.accesses=0",
        "workload.boot=false",
        small=False,
    )
    tenant = sim.tenants[0]
    sim.run_client(tenant.mm, tenant.secondary, pages)
    m = sim.metrics()
    assert sim.check_invariants().counts.sum() == 0
    return m["minor_faults"] + m["major_faults"], m


@pytest.mark.parametrize("capacity_mib", [4, 8, 16])
def test_cpu_accesses_fault_exactly_as_textbook_clock(capacity_mib, tmp_path):
    pages = trace(seed=capacity_mib, n=200_000)
    faults, m = simulated_faults(pages, capacity_mib, secondary="none")
    assert faults == libcachesim_misses(pages, capacity_mib * 256, tmp_path)
    assert m["swap_outs"] > 0  # the capacity was actually exceeded


def test_kvm_guest_faults_exactly_as_textbook_clock(tmp_path):
    """Through KVM in notifier mode: each victim is invalidated through the notifier chain, and the
    guest's accesses count as references because KVM reports its accessed bits."""
    pages = trace(seed=7, n=30_000)
    faults, m = simulated_faults(pages, 4, secondary="kvm")
    assert faults == libcachesim_misses(pages, 4 * 256, tmp_path)
    assert m["invalidations"] == m["swap_outs"] > 0
