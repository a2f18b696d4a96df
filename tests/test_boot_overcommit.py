"""The seed's first claim: a 64-bit guest pins its whole memory through the kernel map, so without
notifiers the host cannot swap it; with notifiers reclaim asks KVM to drop its mappings and swapping works."""

from conftest import run

GUEST_PAGES = 1536 * 256
BOOT = (
    "guest.memory_mib=1536",
    "host.memory_mib=1024",
    "host.swap_mib=2048",
    "workload=sequential",
    "workload.boot=true",  # first every guest page touched once (written), as the direct map does,
    f"workload.accesses={GUEST_PAGES}",  # then read through once more
)


def test_pin_mode_pins_all_ram_swaps_none_and_the_oom_killer_kills_the_guest():
    sim, m = run(*BOOT, "secondary.mode=pin", small=False)
    reserve = sim.host.watermarks[:, 0].sum()
    assert m["pinned_pages_peak"] == sim.host.nframes - reserve  # all RAM but the min reserve, at the kill
    assert m["swap_outs"] == 0
    assert m["oom_kills"] == 1 and sim.tenants[0].killed and m["oom_victims"].startswith("guest0 in tick ")
    assert m["pinned_pages"] == 0  # the killed VMM's exit released its pins
    assert m["accesses"] < sim.mms[0].npages  # killed during boot
    assert m["invariant_violations"] == 0


def test_pin_mode_without_the_oom_killer_fails_every_access_memory_cannot_back():
    sim, m = run(*BOOT, "secondary.mode=pin", "host.oom=fail", small=False)
    guest_pages = sim.mms[0].npages
    mapped = sim.secondaries[0].mapped_pages()
    assert m["pinned_pages"] == mapped == m["pinned_pages_peak"]
    assert mapped == sim.host.nframes - sim.host.watermarks[:, 0].sum()  # all RAM but the min reserve
    assert m["swap_outs"] == 0
    assert m["oom_events"] > 0
    assert m["alloc_failures"] >= 2 * (guest_pages - mapped)  # no frame for the rest, in both passes
    assert m["invariant_violations"] == 0


def test_notifier_mode_swaps_without_oom_and_reports_the_cost():
    sim, m = run(*BOOT, "secondary.mode=notifier", small=False)
    guest_pages = sim.mms[0].npages
    assert m["oom_events"] == 0 and m["alloc_failures"] == 0
    assert m["pinned_pages_peak"] == 0
    assert m["swap_outs"] >= guest_pages - sim.host.nframes
    # The cost: each swapped page was invalidated in KVM, zapped, and its range flushed.
    assert m["invalidations"] >= m["swap_outs"]
    assert m["pages_zapped"] >= m["swap_outs"]
    assert m["tlb_flushes"] >= m["swap_outs"]
    assert m["flush_cost_ns"] > 0
    # And the re-faults: the second pass finds most of the guest swapped out.
    assert m["major_faults"] >= guest_pages - sim.host.nframes
    assert m["secondary_faults"] >= guest_pages + m["major_faults"]
    assert m["invariant_violations"] == 0
