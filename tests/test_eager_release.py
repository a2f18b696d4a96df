"""The strawman of the seed: releasing secondary mappings by default, and what it costs."""

from conftest import run

ROOMY = ("host.memory_mib=128", "workload.accesses=400000", "engine.accesses_per_tick=50000")


def test_eager_release_pays_flushes_and_refaults_that_notifiers_avoid():
    _, plain = run(*ROOMY)
    _, eager = run(*ROOMY, "policies=[swap,eager_release]", "policies.eager_release.every_ticks=1")
    assert plain["swap_outs"] == 0  # no memory pressure: notifier mode never invalidates
    assert plain["tlb_flushes"] == 0
    assert eager["eager_releases"] == eager["ticks"]
    assert eager["tlb_flushes"] >= eager["ticks"] - 1  # every release but the first (nothing mapped yet)
    assert eager["secondary_faults"] > 2 * plain["secondary_faults"]
    assert eager["sim_time_ns"] > plain["sim_time_ns"]
    assert eager["invariant_violations"] == 0


def test_eager_release_of_a_pinning_guest_lets_reclaim_swap_between_releases():
    often = "engine.accesses_per_tick=4096"  # releases between boot chunks, before the pins fill RAM
    _, pinned = run("secondary.mode=pin", often)
    _, released = run("secondary.mode=pin", "policies=[swap,eager_release]", often)
    assert pinned["swap_outs"] == 0 and pinned["oom_kills"] == 1
    assert released["swap_outs"] > 0 and released["pins_released"] > 0 and released["oom_kills"] == 0
    assert released["invariant_violations"] == 0


def test_eager_release_by_madvise_or_mprotect_goes_through_the_host():
    """how=dontneed: one CLEAR invalidation per release and the pages freed (the host refaults them);
    how=mprotect: two PROTECTION_VMA invalidations per release, the pages kept (only KVM refaults)."""
    eager = (*ROOMY, "policies=[swap,eager_release]", "policies.eager_release.every_ticks=1")
    _, clear = run(*eager)
    _, dontneed = run(*eager, "policies.eager_release.how=dontneed")
    _, mprotect = run(*eager, "policies.eager_release.how=mprotect")
    assert clear["invalidations"] == 0  # delivered to the secondary alone, not through the notifier chain
    assert dontneed["invalidations_clear"] == dontneed["eager_releases"] == dontneed["ticks"]
    assert dontneed["minor_faults"] > 2 * clear["minor_faults"]  # the pages were freed: the host refaults
    assert mprotect["invalidations_protection_vma"] == 2 * mprotect["eager_releases"]
    assert mprotect["minor_faults"] == clear["minor_faults"]  # the pages stay
    assert mprotect["secondary_faults"] == clear["secondary_faults"]
    for m in (dontneed, mprotect):
        assert m["invariant_violations"] == 0
