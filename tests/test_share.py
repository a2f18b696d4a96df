"""Shared (KSM) frames: merging identical pages, copy-on-write, unsharing for pins, and what reclaim,
migration, THP collapse and munmap do with them."""

import numpy as np

from conftest import simulation
from mmnsim import Event, hookimpl, is_shared, merge_pages, mergeable, sharing
from mmnsim import counters as C
from mmnsim.frames import SHARED
from mmnsim.invariants import KINDS
from mmnsim.secondary import MODE, SEC_PIN
from mmnsim.thp import collapse

ZERO_BOOT = ("workload.accesses=0", "workload.boot_writes=false", "guest.memory_mib=16", "host.memory_mib=64")


class Recorder:
    label = "recorder"

    def __init__(self):
        self.log: list[tuple] = []

    @hookimpl
    def invalidate_range_start(self, ranges):
        self.log.append(("start", ranges.event, ranges.pages().tolist()))

    @hookimpl
    def invalidate_range_end(self, ranges):
        self.log.append(("end", ranges.event, ranges.pages().tolist()))

    @hookimpl
    def change_pte(self, mm, pages, frames):
        self.log.append(("change_pte", pages.tolist(), frames.tolist()))


def booted(*overrides):
    """A guest whose boot pass read every page: all resident, all zero-filled (identical content)."""
    sim = simulation(*ZERO_BOOT, *overrides)
    sim.run()
    tenant = sim.tenants[0]
    return sim, tenant.mm, tenant.secondary


def violations(sim) -> int:
    return int(sim.check_invariants().counts.sum())


def test_merge_write_protects_the_target_then_replaces_each_duplicate_and_frees_its_frame():
    sim, mm, kvm = booted()
    rec = Recorder()
    mm.chain.subscribe(rec)
    free = sim.host.free_frames()
    merged = merge_pages(sim, mm, np.array([1, 2, 3]), mm, np.array([0, 0, 0]), change_pte=True)
    assert merged == 3
    assert (mm.pte[[1, 2, 3]] == mm.pte[0]).all() and sim.host.ft.key[mm.pte[0]] == SHARED - 3
    assert sim.host.free_frames() == free + 3 and sharing(sim) == (1, 3)
    assert rec.log == [
        ("start", Event.CLEAR, [0]),  # write_protect_page on the page that becomes the KSM page
        ("end", Event.CLEAR, [0]),
        ("start", Event.CLEAR, [1, 2, 3]),  # replace_page on the duplicates
        ("change_pte", [1, 2, 3], [int(mm.pte[0])] * 3),
        ("end", Event.CLEAR, [1, 2, 3]),
    ]
    # KVM zapped in start, so the change_pte inside the window found nothing to repoint: why it went.
    assert kvm.metrics["change_pte_applied"] == 0
    assert (kvm.spte[[0, 1, 2, 3]] < 0).all()
    assert violations(sim) == 0


def test_pages_of_different_content_are_not_merged():
    sim, mm, _ = booted()
    sim.run_client(mm, None, np.array([5]), np.array([True]))  # page 5 now holds unique content
    assert merge_pages(sim, mm, np.array([5, 6]), mm, np.array([4, 4])) == 1
    assert not is_shared(sim, mm, np.array([5]))[0] and is_shared(sim, mm, np.array([6]))[0]


def test_a_write_through_kvm_copies_the_page_and_a_read_shares_it_read_only():
    sim, mm, kvm = booted()
    merge_pages(sim, mm, np.arange(1, 10), mm, np.zeros(9, dtype=np.int64))
    shared_frame = mm.pte[0]
    sim.run_client(mm, kvm, np.array([1, 2]))  # reads map the shared frame, read-only
    assert (kvm.spte[[1, 2]] == shared_frame).all() and not (kvm.sflags[[1, 2]] & 2).any()
    retries = sim.host.ctr.copy()
    sim.run_client(mm, kvm, np.array([2]), np.array([True]))  # a write: copy-on-write
    metrics = sim.metrics()
    # The copy's invalidation bumped KVM's sequence during the fault: it retried, as mmu_invalidate_retry.
    assert metrics["cow_ksm"] == 1 and metrics["fault_retries"] > retries[C.FAULT_RETRIES]
    assert mm.pte[2] != shared_frame and kvm.spte[2] == mm.pte[2] and kvm.sflags[2] & 2
    assert sim.host.ft.key[shared_frame] == SHARED - 8  # nine sharers left (pages 0, 1, 3..9)
    assert mm.token[2] != mm.token[1]  # the write went to the copy, not to the other sharers
    assert violations(sim) == 0


def test_a_cpu_write_copies_the_page_too():
    sim, mm, _ = booted()
    merge_pages(sim, mm, np.array([1]), mm, np.array([0]))
    sim.run_client(mm, None, np.array([0]), np.array([True]))
    assert mm.pte[0] != mm.pte[1] and sharing(sim) == (1, 0)  # page 1 alone on the KSM page now
    sim.run_client(mm, None, np.array([1]), np.array([True]))
    assert sharing(sim) == (0, 0) and sim.metrics()["cow_ksm"] == 2
    assert violations(sim) == 0


def test_a_long_term_pin_unshares_even_for_reading():
    sim, mm, kvm = booted("secondary.mode=pin")
    assert not mergeable(sim, mm, np.array([0]))[0]  # pinned pages are never merged
    sim, mm, kvm = booted()
    merge_pages(sim, mm, np.array([1]), mm, np.array([0]))
    kvm.state[MODE] |= SEC_PIN  # pin from now on, as a late registration would
    kvm.zap(np.array([1]), np.array([2]))
    sim.run_client(mm, kvm, np.array([1]))
    assert mm.pte[1] != mm.pte[0] and sim.host.ft.pin[mm.pte[1]] == 1
    assert sim.metrics()["cow_ksm"] == 1


def test_shared_pages_are_not_migrated_reclaimed_or_collapsed_and_munmap_drops_one_share():
    sim, mm, _ = booted()
    merge_pages(sim, mm, np.arange(1, 512), mm, np.zeros(511, dtype=np.int64))
    frame = mm.pte[0]
    assert sim.migrate(mm, np.array([0, 1, 600]), node=0) == 0  # all on node 0 already, or shared
    refused = sim.metrics()["migrations_refused"]
    assert refused == 2
    assert not collapse(sim, mm, 0, 0)  # a region with KSM pages is not collapsed
    mm.munmap(0, 256)
    assert sim.host.ft.key[frame] == SHARED - 255 and violations(sim) == 0
    mm.munmap(256, 512)
    assert sim.host.ft.key[frame] == -1  # the last sharer gone: the frame is free
    assert violations(sim) == 0


def test_a_writable_entry_to_a_shared_frame_is_a_permission_violation():
    sim, mm, kvm = booted()
    merge_pages(sim, mm, np.array([1]), mm, np.array([0]))
    sim.run_client(mm, kvm, np.array([0]))
    kvm.sflags[0] |= 2  # a buggy plugin makes the shared mapping writable
    report = sim.check_invariants()
    assert report.counts[KINDS.index("permission")] == 1 and "shared (KSM) frame" in report.messages[0]
