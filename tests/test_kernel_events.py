"""Events as the kernel raises them, per-event invalidation counts, and KVM's per-gfn retry rule."""

import numpy as np
import pytest
from test_notifier_semantics import booted

from conftest import simulation
from mmnsim import Event, NotifierRange, PluginError, hookimpl
from mmnsim.compaction import compact
from mmnsim.pagebits import P_DEVICE
from mmnsim.secondary import IN_PROGRESS, INV_HI, INV_LO, MODE, SEC_RETRY_WHOLE_VM


def test_numa_and_compaction_migration_raise_clear_not_migrate():
    sim, tenant, kvm, rec = booted("host.numa_nodes=2")
    sim.migrate(tenant.mm, np.arange(10), 1)  # NUMA balancing's migrate_misplaced_folio
    assert {e for _, e, *_ in rec.log} == {Event.CLEAR}
    assert rec.log[0] == ("start", Event.CLEAR, 10, 10)  # one range per page (try_to_migrate_one), run or not
    rec.log.clear()
    tenant.mm.discard(np.arange(0, tenant.mm.npages, 2))  # holes, so compaction has somewhere to move to
    rec.log.clear()
    compact(sim, 0, 4)
    assert rec.log and {e for _, e, *_ in rec.log} == {Event.CLEAR}
    m = sim.metrics()
    assert m["invalidations_migrate"] == 0
    assert m["invalidations_clear"] > 0


class OwnerLog:
    label = "owners"

    def __init__(self):
        self.log = []
        self.ranges = []

    @hookimpl
    def invalidate_range_start(self, ranges):
        self.log.append((ranges.event, ranges.owner))
        self.ranges += list(zip(ranges.start.tolist(), ranges.end.tolist(), strict=True))

    @hookimpl
    def invalidate_range_end(self, ranges):
        pass


def test_device_migration_raises_migrate_with_the_device_as_owner():
    sim = simulation("secondary=gpu", "secondary.device_memory_mib=4", "secondary.migrate_hot_pages=100",
                     "guest.memory_mib=16", "host.memory_mib=64", "workload.accesses=0")  # fmt: skip
    sim.run()
    gpu, mm = sim.secondaries[0], sim.mms[0]
    rec = OwnerLog()
    mm.chain.subscribe(rec)
    before = sim.metrics()["invalidations_migrate"]
    gpu.harvest_accessed(np.array([0]), np.array([mm.npages]), clear=True)
    gpu.sflags[-50:] |= 1  # S_ACCESSED: the GPU used these pages
    gpu.host_tick(sim)
    assert rec.log == [(Event.MIGRATE, gpu)]
    n = mm.npages
    assert rec.ranges == [(n - 50, n)]  # migrate_vma_collect: one range over the run, not one per page
    assert sim.metrics()["invalidations_migrate"] - before == 1


def test_device_migration_raises_one_migrate_range_per_contiguous_run():
    sim = simulation("secondary=gpu", "secondary.device_memory_mib=4", "secondary.migrate_hot_pages=100",
                     "guest.memory_mib=16", "host.memory_mib=64", "workload.accesses=0")  # fmt: skip
    sim.run()
    gpu, mm = sim.secondaries[0], sim.mms[0]
    rec = OwnerLog()
    mm.chain.subscribe(rec)
    before = sim.metrics()
    gpu.harvest_accessed(np.array([0]), np.array([mm.npages]), clear=True)
    used = np.r_[100:110, 200:230, 231]  # three runs of pages the GPU used
    gpu.sflags[used] |= 1  # S_ACCESSED
    gpu.host_tick(sim)
    assert rec.ranges == [(100, 110), (200, 230), (231, 232)] and rec.log == [(Event.MIGRATE, gpu)]
    m = sim.metrics()
    assert m["invalidations_migrate"] - before["invalidations_migrate"] == 3
    assert m["pages_migrated"] - before["pages_migrated"] == 41  # every page of them moved
    assert (mm.flags[used] & P_DEVICE).all()
    assert sim.check_invariants().counts.sum() == 0


def test_each_operation_is_counted_under_its_event():
    sim, tenant, kvm, _ = booted()
    before = sim.metrics()
    tenant.mm.mprotect(0, 10, "r")
    tenant.mm.madvise_dontneed(20, 30)
    tenant.mm.munmap(40, 50)
    m = sim.metrics()
    delta = {k: m[k] - before[k] for k in ("invalidations_protection_vma", "invalidations_clear",
                                           "invalidations_unmap", "invalidations")}  # fmt: skip
    assert delta == {"invalidations_protection_vma": 1, "invalidations_clear": 1, "invalidations_unmap": 1,
                     "invalidations": 3}  # fmt: skip


class Refuser:
    """An interval subscriber that refuses every non-blockable range (as mlx5_ib_invalidate_range does)."""

    label = "refuser"
    interval = True
    region = (0, 1 << 30)

    @hookimpl
    def invalidate(self, ranges, cur_seq):
        return ranges.blockable


def test_a_refusing_interval_subscriber_keeps_the_whole_mm_subscribers_from_starting():
    sim, tenant, kvm, rec = booted()
    tenant.mm.chain.subscribe(Refuser())
    ranges = NotifierRange(tenant.mm, np.array([0]), np.array([10]), Event.UNMAP, blockable=False)
    assert tenant.mm.invalidate(ranges, lambda: None) is False
    assert rec.log == []  # mn_itree_invalidate failed: no hlist start, and so no end either
    assert (kvm.spte[:10] >= 0).all()
    assert sim.metrics()["invalidations_refused"] == 1


def stuck_in_invalidation(lo, hi, whole_vm=False):
    """A KVM guest, booted, with an invalidation of pages [lo, hi) in progress that never ends."""
    sim, tenant, kvm, _ = booted()
    kvm.zap(np.array([0]), np.array([tenant.mm.npages]))
    kvm.state[IN_PROGRESS] = 1
    kvm.state[INV_LO], kvm.state[INV_HI] = lo, hi
    if whole_vm:
        kvm.state[MODE] |= SEC_RETRY_WHOLE_VM
    return sim, tenant, kvm


def test_a_fault_outside_the_range_being_invalidated_installs():
    sim, tenant, kvm = stuck_in_invalidation(100, 200)
    sim.run_client(tenant.mm, kvm, np.arange(0, 100))
    assert (kvm.spte[:100] >= 0).all()
    assert sim.metrics()["fault_retries"] == 0


def test_a_fault_inside_the_range_being_invalidated_retries():
    sim, tenant, kvm = stuck_in_invalidation(100, 200)
    with pytest.raises(PluginError, match="retrying"):
        sim.run_client(tenant.mm, kvm, np.array([150]))
    assert kvm.spte[150] < 0


def test_the_2008_whole_vm_rule_retries_every_fault_while_one_is_in_progress():
    sim, tenant, kvm = stuck_in_invalidation(100, 200, whole_vm=True)
    with pytest.raises(PluginError, match="retrying"):
        sim.run_client(tenant.mm, kvm, np.array([5]))


def test_kvm_records_the_union_of_the_ranges_in_progress():
    sim, tenant, kvm, _ = booted()
    kvm.begin_invalidate(NotifierRange(tenant.mm, np.array([300, 10]), np.array([301, 20]), Event.CLEAR))
    kvm.begin_invalidate(NotifierRange(tenant.mm, np.array([500]), np.array([600]), Event.CLEAR))
    assert (kvm.state[IN_PROGRESS], kvm.state[INV_LO], kvm.state[INV_HI]) == (2, 10, 600)
    kvm.end_invalidate()
    kvm.end_invalidate()
    kvm.begin_invalidate(NotifierRange(tenant.mm, np.array([7]), np.array([8]), Event.CLEAR))
    assert (kvm.state[INV_LO], kvm.state[INV_HI]) == (7, 8)  # a new window starts afresh
