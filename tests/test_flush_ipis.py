"""KVM's remote TLB flushes kick only the vCPUs in guest mode (kvm_make_vcpus_request_mask:
kvm_request_needs_ipi); the others take the request at their next entry, one flush for all they missed. Which
vCPUs are in guest mode is the share of the last tick each client spent on its own accesses
(``Client.in_guest``); under ``engine.schedule=serial`` no other tenant's vCPU is."""

import pytest

from conftest import run, simulation

HOG = "processes=[{name: hog, memory_mib: 32, node: 0, workload: {name: uniform, accesses: 300000}}]"


def _flush(sim, share: float, flushes: int) -> dict:
    kvm = sim.tenants[0].secondary
    kvm.client._in_guest = share
    before = dict(kvm.metrics)
    sim.episode += 1  # a new episode: the vCPUs out of the guest take its requests at their next entry
    kvm._flush_remote_tlbs(flushes)
    return {k: kvm.metrics[k] - before.get(k, 0) for k in ("tlb_flush_ipis", "remote_tlb_flush", "vcpu_tlb_flushes")}


def test_a_flush_kicks_the_vcpus_in_guest_mode_and_the_others_flush_once_at_entry():
    sim = simulation("guest.vcpus=4", "workload.accesses=0")
    assert _flush(sim, 1.0, 10) == {"tlb_flush_ipis": 40, "remote_tlb_flush": 10, "vcpu_tlb_flushes": 40}
    # A quarter of the time in the guest: 10 kicks of 40; 1 - 0.75^4 of the requests found a vCPU to kick; the
    # three vCPUs' worth outside take all ten at one entry each.
    assert _flush(sim, 0.25, 10) == {"tlb_flush_ipis": 10, "remote_tlb_flush": 6, "vcpu_tlb_flushes": 13}
    assert _flush(sim, 0.0, 10) == {"tlb_flush_ipis": 0, "remote_tlb_flush": 0, "vcpu_tlb_flushes": 4}
    # The fractions carry: 0.8 + 0.84 of a remote_tlb_flush left over from the calls above make one more.
    assert _flush(sim, 0.25, 1)["remote_tlb_flush"] == 1


def test_the_vcpu_whose_own_thread_reclaims_gets_no_ipi_and_flushes_once_at_its_next_entry():
    _, m = run("host.memcg=true", "guest.vcpus=1", "engine.race_window=0")
    assert m["kvm.tlb_flushes"] > 0 and m["direct_reclaims"] > 0
    assert m["kvm.tlb_flush_ipis"] == 0 and m["kvm.remote_tlb_flush"] == 0  # one vCPU alone: no IPI ever sent
    assert m["kvm.vcpu_tlb_flushes"] == m["direct_reclaims"]


def test_a_guest_that_only_hits_is_in_guest_mode_all_of_its_tick_and_one_that_faults_is_not():
    quiet = simulation("host.memory_mib=256", "workload.accesses=200000")
    quiet.run()
    assert quiet.clients[0].in_guest == pytest.approx(1.0)
    busy = simulation("workload.accesses=200000")  # 64 MiB of guest in a 48 MiB host: swap-ins all along
    busy.run()
    assert 0 < busy.clients[0].in_guest < 0.5


def test_vcpus_outside_the_guest_get_fewer_ipis_than_every_flush_to_every_vcpu():
    _, m = run("guest.vcpus=4", "engine.race_window=0")  # kswapd reclaims on its own CPU
    assert m["direct_reclaims"] == 0 and m["kvm.tlb_flushes"] > 0
    assert 0 < m["kvm.tlb_flush_ipis"] < 0.5 * 4 * m["kvm.tlb_flushes"]
    assert m["kvm.vcpu_tlb_flushes"] > m["kvm.tlb_flush_ipis"]  # the rest flushed at their next entry


def test_a_serial_schedule_finds_no_other_tenants_vcpu_in_guest_mode_and_sums_the_tick():
    common = ("guest.vcpus=2", "host.memcg=true", "engine.race_window=0", HOG)
    sim, serial = run(*common, "engine.schedule=serial")
    _, concurrent = run(*common)
    assert serial["kvm.tlb_flushes"] == concurrent["kvm.tlb_flushes"]  # the same accesses, the same reclaim
    assert serial["kvm.tlb_flush_ipis"] < concurrent["kvm.tlb_flush_ipis"]  # the hog's reclaims kick nobody
    assert sim.clients[0].in_guest == 0.0  # between batches: nobody's vCPU in the guest
    elapsed = [c.elapsed_ns for c in sim.clients]
    assert serial["sim_time_ns"] == pytest.approx(sum(elapsed), rel=1e-9)


def test_a_faults_world_switch_is_guest_mode_and_at_most_the_fault():
    """vcpu->mode is IN_GUEST_MODE from before a VM entry to after the exit (vcpu_enter_guest), so of each KVM
    fault its ``guest_mode_ns`` counts as guest mode; the handling between does not. A guest whose sptes an eager
    release zaps each tick spends its tick on accesses and KVM faults alone (memory to spare: no host fault after
    the boot): with the whole fault counted, all of the tick is guest mode; with none, only the accesses."""
    shares = {}
    for window in (0, 500, 1000, 5000):  # fault_ns is 1000
        sim = simulation("host.memory_mib=256", "workload.accesses=200000", "policies=[swap,eager_release]",
                         "policies.eager_release.every_ticks=1", "engine.accesses_per_tick=65536", "guest.vcpus=1",
                         f"secondary.guest_mode_ns={window}", "engine.race_window=0")  # fmt: skip
        m = sim.run()
        assert m["secondary_faults"] > 0 and m["major_faults"] == 0
        shares[window] = sim.clients[0].in_guest
    assert 0 < shares[0] < 0.5 < shares[500] < shares[1000] == pytest.approx(1.0, abs=1e-3)
    assert shares[5000] == shares[1000]  # never more than the fault itself


def test_the_world_switch_window_moves_the_kicks_of_a_guest_whose_vcpus_fault():
    common = ("guest.vcpus=2", "host.memcg=true", "engine.race_window=0", "guest.memory_mib=96", "host.memory_mib=64")
    _, none = run(*common, "secondary.guest_mode_ns=0")
    _, whole = run(*common, "secondary.guest_mode_ns=1000")
    assert none["kvm.tlb_flushes"] == whole["kvm.tlb_flushes"] > 0  # the same reclaim: the window only times
    assert whole["kvm.tlb_flush_ipis"] > 2 * none["kvm.tlb_flush_ipis"]
