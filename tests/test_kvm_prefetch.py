"""KVM's shadow MMU maps the present neighbours of a faulting gfn (paging_tmpl.h FNAME(pte_prefetch)); the TDP
MMU under EPT maps the faulting gfn alone. The validation rows 9 and 23 rest on it (docs/validation.md)."""

import numpy as np

from conftest import run, simulation
from mmnsim.secondary import PREFETCH

# A 16 MiB guest (4,096 pages) that boots, then each tick has its sptes dropped by an mprotect round trip
# (the pages stay) and reads every page once in order.
PASSES = 4
RELEASED = ("guest.memory_mib=16", "guest.vcpus=1", "guest.thp=false", "host.memory_mib=128", "host.swap_mib=0",
            "workload=sequential", f"workload.accesses={PASSES * 4096}", "engine.accesses_per_tick=4096",
            "policies=[swap,eager_release]", "policies.eager_release.every_ticks=1",
            "policies.eager_release.how=mprotect")  # fmt: skip


def test_a_shadow_mmu_fault_maps_its_block_of_8_when_the_pages_stay():
    _, ept = run(*RELEASED, "secondary.paging=ept")
    _, shadow = run(*RELEASED, "secondary.paging=shadow")
    boot = 4096  # the boot's faults find no neighbour present: one spte each
    assert ept["secondary_faults"] == boot + PASSES * 4096
    assert ept["secondary_prefetched"] == 0
    assert shadow["secondary_faults"] == boot + PASSES * 4096 // 8
    assert shadow["secondary_prefetched"] == PASSES * 4096 * 7 // 8
    assert shadow["minor_faults"] == ept["minor_faults"] == boot  # prefetch faults nothing in
    assert shadow["invariant_violations"] == ept["invariant_violations"] == 0


def test_no_prefetch_on_the_2008_kernel_or_with_a_block_of_1():
    _, old = run(*RELEASED, "secondary.paging=shadow", "kernel='2008'")
    _, off = run(*RELEASED, "secondary.paging=shadow", "secondary.prefetch=1")
    for m in (old, off):
        assert m["secondary_prefetched"] == 0
        assert m["secondary_faults"] == 4096 + PASSES * 4096


def test_prefetch_stops_at_the_first_absent_neighbour_and_leaves_the_accessed_bits_clear():
    sim = simulation("guest.memory_mib=16", "guest.vcpus=1", "guest.thp=false", "host.memory_mib=128",
                     "host.swap_mib=0", "secondary.paging=shadow", "workload.accesses=1")  # fmt: skip
    sim.run()
    kvm = sim.secondaries[0]
    mm = kvm.mm
    assert kvm.state[PREFETCH] == 8
    # Drop the sptes of pages 8..15 and the host page 12: a fault on 9 maps 8 (the block's start), skips 9
    # (its own), maps 10 and 11, and stops at 12, which the host no longer maps.
    mm.madvise_dontneed(12, 13)
    kvm.zap(np.array([8]), np.array([16]))
    before = sim.counter("secondary_prefetched")
    sim.run_client(mm, kvm, np.array([9]), np.zeros(1, np.bool_))
    mapped = kvm.spte[8:16] >= 0
    assert mapped.tolist() == [True, True, True, True, False, False, False, False]
    assert sim.counter("secondary_prefetched") - before == 3
    young = kvm.harvest_accessed(np.arange(8, 12), np.arange(9, 13), clear=False)
    assert young.tolist() == [False, True, False, False]  # the access itself; the prefetched entries are old
