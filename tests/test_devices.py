"""RDMA on-demand paging and GPU shared virtual memory, after the kernel's hmm-tests
(tools/testing/selftests/mm/hmm-tests.c), and several secondary MMUs on one mm."""

import numpy as np
import pytest

from conftest import run, simulation
from mmnsim import ConfigError, Event, NotifierRange, hookimpl
from mmnsim.pagebits import P_DEVICE, PTE_NONE

N = 256  # pages the scenario tests touch


def device(kind="gpu", *extra):
    """A 16 MiB process mapped by one device, nothing touched yet (a GPU faulting page by page, as hmm-tests'
    device does, unless ``extra`` sets its fault block)."""
    per_page = ("secondary.fault_block_kib=4",) if kind == "gpu" else ()
    sim = simulation(f"secondary={kind}", "workload.accesses=0", "workload.boot=false", "guest.memory_mib=16",
                     "host.memory_mib=64", *per_page, *extra)  # fmt: skip
    return sim, sim.tenants[0].mm, sim.secondaries[0]


def device_access(sim, mm, dev, pages, write=False):
    sim.run_client(mm, dev, pages, np.full(pages.size, write))


@pytest.mark.parametrize("kind", ["gpu", "rdma"])
def test_anon_read_faults_the_pages_in_and_maps_them(kind):
    sim, mm, dev = device(kind)
    device_access(sim, mm, dev, np.arange(N))
    m = sim.metrics()
    assert m["secondary_faults"] == N and m["minor_faults"] == N  # one device fault, one zero-fill each
    assert np.array_equal(dev.spte[:N], mm.pte[:N]) and (dev.spte[:N] >= 0).all()
    assert sim.check_invariants().counts.sum() == 0


def test_anon_read_prot_none_fails_with_a_fault_error():
    sim, mm, dev = device()
    mm.mprotect(0, N, "none")
    device_access(sim, mm, dev, np.arange(N))
    assert sim.metrics()["access_errors"] == N and (dev.spte[:N] == PTE_NONE).all()


def test_anon_write_prot_fails_until_the_mapping_is_writable_again():
    sim, mm, dev = device()
    device_access(sim, mm, dev, np.arange(N))  # read: mapped
    mm.mprotect(0, N, "r")
    assert (dev.spte[:N] == PTE_NONE).all()  # PROTECTION_VMA dropped the device's translations
    device_access(sim, mm, dev, np.arange(N), write=True)
    assert sim.metrics()["access_errors"] == N
    mm.mprotect(0, N, "rw")
    device_access(sim, mm, dev, np.arange(N), write=True)
    assert sim.metrics()["access_errors"] == N and sim.metrics()["writes"] == N
    assert sim.check_invariants().counts.sum() == 0


@pytest.mark.parametrize("kind", ["gpu", "rdma"])
def test_munmap_during_device_access_tears_down_every_device_mapping(kind):
    sim, mm, dev = device(kind)
    device_access(sim, mm, dev, np.arange(2 * N), write=True)
    mm.munmap(N // 2, 3 * N // 2)
    assert (dev.spte[N // 2 : 3 * N // 2] == PTE_NONE).all() and (dev.spte[: N // 2] >= 0).all()
    device_access(sim, mm, dev, np.arange(N // 2, N))  # the device keeps reading what was unmapped
    assert sim.metrics()["access_errors"] == N // 2
    assert sim.check_invariants().counts.sum() == 0


def test_migrate_to_device_memory_and_back_keeps_the_data():
    sim, mm, gpu = device("gpu", "secondary.device_memory_mib=4", "secondary.migrate_hot_pages=1000000")
    pages = np.arange(N)
    device_access(sim, mm, gpu, pages, write=True)
    written = mm.token[:N].copy()
    assert (written != 0).all()
    gpu.host_tick(sim)  # the GPU moves what it used into VRAM
    assert (mm.flags[:N] & P_DEVICE).all()
    assert all(sim.host.node_of(f) == gpu.device_node for f in mm.pte[:N])
    assert np.array_equal(gpu.spte[:N], mm.pte[:N])  # the GPU maps VRAM directly
    assert sim.host.free_frames() == sim.host.nframes  # nothing left in host RAM
    device_access(sim, mm, gpu, pages)  # GPU accesses hit VRAM
    assert sim.metrics()["secondary_faults"] == N
    mm.access(pages[:10])  # the CPU touches some: they come back to RAM
    assert not (mm.flags[:10] & P_DEVICE).any() and (mm.flags[10:N] & P_DEVICE).all()
    assert np.array_equal(mm.token[:N], written)
    assert sim.check_invariants().counts.sum() == 0  # content tokens survived both ways
    m = sim.metrics()
    assert m["pages_migrated"] == N + 10 and m["gpu.migrated_to_ram"] == 10


def test_process_exit_releases_the_devices_and_frees_everything():
    sim, mm, gpu = device("gpu", "secondary.device_memory_mib=4", "secondary.migrate_hot_pages=100")
    device_access(sim, mm, gpu, np.arange(N), write=True)
    gpu.host_tick(sim)
    events = []

    class Watch:
        interval, region = True, (0, mm.npages)

        @hookimpl
        def invalidate(self, ranges, cur_seq):
            events.append(ranges.event)

    mm.chain.subscribe(Watch())
    mm.exit()
    assert Event.RELEASE in events
    assert gpu.mapped_pages() == 0 and not mm.chain
    assert sim.host.free_frames() == sim.host.nframes and sim.host.free_on(gpu.device_node) == 1024
    assert sim.check_invariants().counts.sum() == 0


def test_pinned_registrations_pin_the_region_up_front_and_cannot_fault():
    for kind in ("rdma", "gpu"):
        sim, m = run(f"secondary={kind}", "secondary.mode=pin", "secondary.region_mib=16", "workload.accesses=100000")
        dev = sim.secondaries[0]
        assert m[f"{kind}.registered_pages"] == 16 * 256 == m["pinned_pages_peak"]
        assert m["secondary_faults"] == 0 and m["swap_outs"] == 0
        assert m["access_errors"] == 0  # the workload stays inside the registered region
        assert dev.region == (0, 16 * 256)
        assert m["invariant_violations"] == 0


def test_a_kvm_guest_whose_memory_a_nic_and_a_gpu_also_map():
    sim, m = run(
        "guest.devices=[{secondary: {name: rdma, region_mib: 32}, workload: {name: zipf, accesses: 200000}},"
        "{secondary: {name: gpu, region_start_mib: 16, region_mib: 16}, workload: {name: uniform, accesses: 200000}}]"
    )
    kvm, rdma, gpu = sim.secondaries
    assert {s.name for s in sim.mms[0].chain.subscribers()} == {"kvm", "rdma", "gpu"}
    assert gpu.region == (16 * 256, 32 * 256)
    for name in ("kvm", "rdma", "gpu"):
        assert m[f"{name}.accesses"] > 0 and m[f"{name}.secondary_faults"] > 0
    assert m["kvm.accesses"] + m["rdma.accesses"] + m["gpu.accesses"] == m["accesses"]
    assert m["invariant_violations"] == 0
    before = (rdma.mapped_pages(), gpu.mapped_pages())
    assert min(before) > 0
    sim.mms[0].munmap(0, sim.mms[0].npages)  # each of the three is told and drops everything
    assert kvm.mapped_pages() == rdma.mapped_pages() == gpu.mapped_pages() == 0


def test_reclaim_cannot_see_a_nic_use_its_buffer_so_it_faults_more_than_kvm():
    hot = ("workload=hotcold", "workload.hot_fraction=0.5", "workload.hot_probability=0.95", "workload.shift_every=0",
           "workload.accesses=1500000")  # fmt: skip
    _, kvm = run(*hot, "secondary=kvm")
    _, rdma = run(*hot, "secondary=rdma")
    assert rdma["major_faults"] > 1.3 * kvm["major_faults"]
    assert rdma["secondary_faults"] > 1.3 * kvm["secondary_faults"]
    assert "rdma.young_pages_aged" not in rdma and kvm["kvm.young_pages_aged"] > 0
    assert rdma["fault_retries"] > 0  # ODP's read_begin/read_retry collided with reclaim
    assert rdma["invariant_violations"] == kvm["invariant_violations"] == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("secondary.region_start_mib=64", "secondary: region_start_mib=64 is outside the mm of 64 MiB (0..63)"),
        ("secondary.region_mib=0", "secondary: region_mib must be > 0"),
        ("secondary.region_mib=100", "secondary: region [0 MiB, 100 MiB) does not fit in the mm of 64 MiB"),
    ],
)
def test_a_region_outside_the_mm_or_empty_is_refused(override, message):
    with pytest.raises(ConfigError) as err:
        simulation("secondary=rdma", override)
    assert message in str(err.value)


def test_an_unknown_notifier_event_is_refused():
    with pytest.raises(ValueError, match="unknown notifier event 42; accepted: UNMAP, CLEAR"):
        NotifierRange(None, np.array([0]), np.array([1]), 42)
