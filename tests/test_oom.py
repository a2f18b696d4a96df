"""The OOM killer and the OOM reaper: who is killed, what the reaper tells the secondary MMUs, and a
subscriber that refuses the reaper's non-blockable range."""

import numpy as np

from conftest import run, simulation
from mmnsim import Event, hookimpl
from mmnsim.oom import MAX_OOM_REAP_RETRIES

# A guest that cannot fit beside a small process that keeps the run going: without swap nothing can be
# reclaimed, so the OOM killer must act.
HOG = "processes=[{name: hog, memory_mib: 8, node: 0, workload: {name: uniform, accesses: 3000000}}]"
NO_SWAP = ("host.swap_mib=0", "guest.memory_mib=64", "host.memory_mib=48", HOG)
ODP_DEVICE = "guest.devices=[{secondary: {name: rdma}, workload: {name: uniform, accesses: 100000}}]"


def test_a_pinning_guest_that_outgrows_the_host_is_killed_and_the_others_go_on():
    sim, m = run("secondary.mode=pin", HOG)
    guest, hog = sim.tenants
    assert m["oom_kills"] == 1 and guest.killed and not hog.killed
    assert m["oom_victims"].startswith("guest0 in tick 0 (by ")
    assert guest.mm.exited and sim.host.pinned_pages() == 0  # its exit let go of the pins
    assert hog.clients[0].stream.done  # the hog ran its whole workload
    assert m["invariant_violations"] == 0


def test_the_victim_is_the_largest_unless_its_oom_score_adj_exempts_it():
    sim, m = run("secondary.mode=pin", HOG)
    assert sim.oom.kills[0].tenant == "guest0"
    sim, m = run("secondary.mode=pin", HOG.replace("node: 0,", "node: 0, oom_score_adj: 1000,"))
    assert sim.oom.kills[0].tenant == "hog"  # adj 1000 adds all of RAM and swap to its score
    sim, m = run("secondary.mode=pin", "guest.oom_score_adj=-1000", HOG)
    assert [k.tenant for k in sim.oom.kills] == ["hog"] and not sim.tenants[0].killed


class Reaped:
    """Logs what the reaper delivers to a whole-mm subscriber."""

    label = "reaped"

    def __init__(self):
        self.log = []

    @hookimpl
    def invalidate_range_start(self, ranges):
        self.log.append((ranges.event, ranges.blockable, int(ranges.start[0]), int(ranges.end[0])))

    @hookimpl
    def invalidate_range_end(self, ranges):
        pass


def test_the_reaper_delivers_one_non_blockable_unmap_and_kvm_drops_its_entries():
    sim = simulation(*NO_SWAP)
    spy = Reaped()
    sim.tenants[0].mm.chain.subscribe(spy)
    m = sim.run()
    mm = sim.tenants[0].mm
    assert m["oom_kills"] == 1 and sim.tenants[0].killed
    assert (Event.UNMAP, False, 0, mm.npages) in spy.log  # __oom_reap_task_mm's range
    assert m["oom_reaped_pages"] > 0 and m["oom_reaper_refusals"] == 0
    assert (sim.tenants[0].secondary.spte < 0).all()
    assert m["invariant_violations"] == 0


def test_an_odp_subscriber_refuses_the_reaper_which_retries_then_gives_up_and_the_exit_frees_it():
    sim = simulation(*NO_SWAP, ODP_DEVICE)
    m = sim.run()
    kill = sim.oom.kills[0]
    assert kill.tenant == "guest0" and not kill.reaped
    assert kill.reap_attempts == MAX_OOM_REAP_RETRIES == m["oom_reaper_refusals"]
    assert m["oom_reaped_pages"] == 0  # every attempt refused: nothing reaped
    assert sim.tenants[0].mm.exited  # MMF_OOM_SKIP, then exit_mmap with blocking allowed
    assert np.count_nonzero(sim.tenants[0].mm.pte >= 0) == 0
    assert m["invariant_violations"] == 0


def test_no_second_victim_while_the_first_is_being_reaped():
    sim = simulation(*NO_SWAP, ODP_DEVICE)
    sim.run()
    assert len(sim.oom.kills) == 1  # the hog, still allocating meanwhile, was spared


def test_without_the_oom_killer_failing_allocations_are_counted_and_nobody_dies():
    sim, m = run("secondary.mode=pin", "host.oom=fail", HOG)
    assert m["oom_kills"] == 0 and not any(t.killed for t in sim.tenants)
    assert m["alloc_failures"] > 0 and m["invariant_violations"] == 0
