"""What each mm operation tells the secondary MMUs, in the kernel's order, and what KVM does with it."""

import numpy as np
import pytest

from conftest import simulation
from mmnsim import Event, hookimpl
from mmnsim.frames import ORPHAN
from mmnsim.pagebits import PTE_NONE


class Recorder:
    """A subscriber that logs every notifier call and checks the start/end pairing."""

    label = "recorder"

    def __init__(self, mm):
        self.mm = mm
        self.log: list[tuple] = []
        self.open = 0

    @hookimpl
    def invalidate_range_start(self, ranges):
        # Start comes while the primary PTEs still map the pages.
        mapped = np.count_nonzero(self.mm.pte[ranges.pages()] >= 0)
        self.log.append(("start", ranges.event, len(ranges), mapped))
        self.open += 1

    @hookimpl
    def invalidate_range_end(self, ranges):
        self.log.append(("end", ranges.event, len(ranges), np.count_nonzero(self.mm.pte[ranges.pages()] >= 0)))
        self.open -= 1

    @hookimpl
    def release(self, mm):
        self.log.append(("release", mm.name))


def booted(*overrides):
    sim = simulation("workload.accesses=0", "guest.memory_mib=16", "host.memory_mib=64", *overrides)
    sim.run()  # the boot pass: every page faulted in through KVM
    tenant = sim.tenants[0]
    recorder = Recorder(tenant.mm)
    tenant.mm.chain.subscribe(recorder)
    return sim, tenant, tenant.secondary, recorder


def test_munmap_unmaps_from_kvm_before_the_pages_are_freed():
    sim, tenant, kvm, rec = booted()
    free_before = sim.host.free_frames()
    tenant.mm.munmap(100, 200)
    assert rec.log == [("start", Event.UNMAP, 1, 100), ("end", Event.UNMAP, 1, 0)]
    assert (kvm.spte[100:200] == PTE_NONE).all() and (kvm.spte[:100] >= 0).all()
    assert sim.host.free_frames() == free_before + 100
    assert kvm.metrics["tlb_flushes"] == 1
    errors = sim.host.ctr.copy()
    sim.run_client(tenant.mm, kvm, np.arange(100, 110))  # the guest touches unmapped memory
    assert sim.metrics()["access_errors"] == 10 + 0 * errors.sum()
    assert sim.check_invariants().counts.sum() == 0


def test_madvise_dontneed_clears_and_the_page_refaults_zero_filled():
    sim, tenant, kvm, rec = booted()
    assert tenant.mm.token[5] != 0  # boot wrote every page
    tenant.mm.madvise_dontneed(0, 10)
    assert rec.log[0][:2] == ("start", Event.CLEAR)
    assert tenant.mm.token[5] == 0 and (tenant.mm.pte[:10] == PTE_NONE).all()
    minor = sim.metrics()["minor_faults"]
    sim.run_client(tenant.mm, kvm, np.arange(10))
    assert sim.metrics()["minor_faults"] == minor + 10
    assert sim.check_invariants().counts.sum() == 0


def test_mprotect_read_only_refuses_device_writes_until_made_writable_again():
    sim, tenant, kvm, rec = booted()
    tenant.mm.mprotect(0, 50, "r")
    assert rec.log[0][:2] == ("start", Event.PROTECTION_VMA)
    assert (kvm.spte[:50] == PTE_NONE).all()
    errors = sim.metrics()["access_errors"]
    sim.run_client(tenant.mm, kvm, np.arange(50), np.ones(50, bool))  # writes
    assert sim.metrics()["access_errors"] == errors + 50
    sim.run_client(tenant.mm, kvm, np.arange(50))  # reads are fine
    assert sim.metrics()["access_errors"] == errors + 50
    tenant.mm.mprotect(0, 50, "rw")
    sim.run_client(tenant.mm, kvm, np.arange(50), np.ones(50, bool))
    assert sim.metrics()["access_errors"] == errors + 50
    assert sim.check_invariants().counts.sum() == 0


def test_exit_releases_every_subscriber_and_frees_everything():
    sim, tenant, kvm, rec = booted()
    tenant.mm.exit()
    assert rec.log[0] == ("release", tenant.mm.name)
    assert not tenant.mm.chain
    assert kvm.mapped_pages() == 0
    assert sim.host.free_frames() == sim.host.nframes and sim.host.swap_used() == 0
    assert sim.check_invariants().counts.sum() == 0


def test_reclaim_invalidates_each_victim_as_its_own_range_with_event_clear():
    sim = simulation("workload.accesses=0", "workload.boot=false")
    tenant = sim.tenants[0]
    rec = Recorder(tenant.mm)
    tenant.mm.chain.subscribe(rec)
    sim.run_client(tenant.mm, tenant.secondary, np.arange(tenant.mm.npages), np.ones(tenant.mm.npages, bool))
    starts = [e for e in rec.log if e[0] == "start"]
    assert starts and all(e[1] == Event.CLEAR for e in starts)
    assert sum(e[2] for e in starts) == sim.metrics()["swap_outs"]
    assert all(e[3] == e[2] for e in starts)  # every victim still mapped when start is called
    assert rec.open == 0


def test_pinned_memory_unmapped_by_the_process_stays_alive_until_the_device_lets_go():
    sim, tenant, kvm, rec = booted("secondary.mode=pin")
    assert not tenant.mm.chain.subscribers()[:-1]  # pin-mode KVM does not subscribe (only our recorder)
    frames = tenant.mm.pte[:10].copy()
    free_before = sim.host.free_frames()
    tenant.mm.munmap(0, 10)
    # The pin keeps the frames; the device still maps them: the coherence hole notifiers close.
    assert (sim.host.ft.key[frames] == ORPHAN).all() and sim.host.free_frames() == free_before
    report = sim.check_invariants()
    assert report.counts[0] == 10 and "kvm[guest0] maps page 0" in report.messages[0]
    kvm.teardown()
    assert sim.host.free_frames() == sim.host.nframes - 0 - np.count_nonzero(tenant.mm.pte >= 0)
    assert sim.host.pinned_pages() == 0


def test_a_secondary_that_ignores_invalidations_is_caught():
    from mmnsim.plugins.kvm import KVM

    class Deaf(KVM):
        name = "deaf-kvm"

        @hookimpl
        def invalidate_range_start(self, ranges):
            pass  # forgets to zap

        @hookimpl
        def invalidate_range_end(self, ranges):
            pass

    class Plugin:
        @staticmethod
        @hookimpl
        def register_components():
            return [Deaf]

    sim = simulation("secondary.name=deaf-kvm", plugins=[Plugin])
    m = sim.run()
    assert m["coherence_violations"] > 0 or m["isolation_violations"] > 0  # found by the per-tick check
    assert any("deaf-kvm[guest0] maps page" in msg for msg in sim.violation_messages)
    assert m["accesses"] > 0

    checked = simulation("secondary.name=deaf-kvm", "engine.check_accesses=true", plugins=[Plugin])
    c = checked.run()
    # Counting every access a stale entry served as well: more violations than the per-tick check alone.
    assert c["coherence_violations"] + c["isolation_violations"] > m["coherence_violations"] + m["isolation_violations"]


@pytest.mark.parametrize("pressure", [False, True])
def test_kvm_retries_a_fault_when_reclaim_it_triggered_invalidated_meanwhile(pressure):
    host = "host.memory_mib=48" if pressure else "host.memory_mib=256"
    sim = simulation(host)
    m = sim.run()
    assert (m["fault_retries"] > 0) == pressure
    assert m["coherence_violations"] == m["isolation_violations"] == 0
