"""RDMA and GPU closer to their drivers (drivers/infiniband/hw/mlx5/odp.c, core/umem.c, amdkfd/kfd_svm.c)."""

import numpy as np

from conftest import simulation
from mmnsim import Event, NotifierRange


def device(kind, *extra):
    sim = simulation(f"secondary={kind}", "workload.accesses=0", "workload.boot=false", "guest.memory_mib=16",
                     "host.memory_mib=64", *extra)  # fmt: skip
    return sim, sim.tenants[0].mm, sim.secondaries[0]


def test_mlx5_posts_one_umr_per_block_of_mapped_pages_small_holes_do_not_split_a_block():
    sim, mm, nic = device("rdma")
    mapped = [0, 1, 2, 3, 5, 6, 9, 10, 40]  # hole at 4 (not aligned): same block; 7-8 holds index 8: new block
    sim.run_client(mm, nic, np.array(mapped))
    mm.invalidate(NotifierRange(mm, np.array([0, 32]), np.array([16, 48]), Event.CLEAR), lambda: None)
    assert nic.metrics["umrs"] == 3  # [0..6], [9..10] in the first call; [40] in the second
    assert nic.metrics["pages_zapped"] == len(mapped)


def test_pinned_registration_is_all_or_nothing_within_rlimit_memlock():
    sim, mm, nic = device("rdma", "secondary.mode=pin", "secondary.memlock_mib=8")
    assert nic.metrics["registration_failures"] == 1 and sim.host.pinned_pages() == 0
    sim.run_client(mm, nic, np.arange(64))
    assert sim.metrics()["access_errors"] == 64  # no memory region: every access is an error
    ok, _, nic = device("rdma", "secondary.mode=pin", "secondary.memlock_mib=16")
    assert nic.metrics["registered_pages"] == 16 * 256 == ok.host.pinned_pages()


def test_an_odp_fault_stalls_the_queue_pair_for_its_whole_latency():
    sim, mm, nic = device("rdma")
    client = nic.client
    assert client.vcpus == 4  # the NIC is the guest's main client here: four "CPUs" would share a CPU fault
    sim.run_client(mm, nic, np.arange(10))
    assert client._pending_stall == 10 * nic.cfg.fault_ns  # the queue pair waits out every fault whole


def test_a_gpu_fault_maps_the_drivers_block_around_it():
    sim, mm, gpu = device("gpu", "secondary.fault_block_kib=64")
    sim.run_client(mm, gpu, np.arange(0, 256, 2))  # every other page of 1 MiB
    m = sim.metrics()
    assert m["secondary_faults"] == 256 // 16 and (gpu.spte[:256] >= 0).all()  # one fault per 64 KiB
    assert m["gpu.prefetched_pages"] == 256 and m["minor_faults"] == 256
    sim, mm, gpu = device("gpu", "secondary.fault_block_kib=2048")
    sim.run_client(mm, gpu, np.array([700]))
    assert (gpu.spte[512:1024] >= 0).all() and (gpu.spte[:512] < 0).all()  # the aligned 2 MiB around page 700
    assert sim.check_invariants().counts.sum() == 0


def test_a_fault_batch_stalls_the_faulting_warps_not_the_whole_gpu():
    _, _, gpu = device("gpu", "secondary.warps=2048")
    _, _, whole = device("gpu", "secondary.warps=256")
    batch = gpu.cfg.batch_ns + 256 * gpu.cfg.fault_ns
    assert whole.fault_cost_ns(256) == batch  # 256 faulting warps of 256: the whole GPU waits
    assert gpu.fault_cost_ns(256) == batch / 8  # 256 of 2048 warps wait, the rest run on
    assert gpu.fault_cost_ns(512 + 2) == 2 * batch / 8 + (gpu.cfg.batch_ns + 2 * gpu.cfg.fault_ns) * 2 / 2048


def test_without_xnack_an_invalidation_quiesces_the_queues_once_per_eviction_window():
    sim, mm, gpu = device("gpu", "secondary.xnack=false")
    sim.run_client(mm, gpu, np.arange(64))
    before = gpu.client._pending_stall
    mm.invalidate(NotifierRange(mm, np.array([0]), np.array([8]), Event.CLEAR), lambda: None)
    mm.invalidate(NotifierRange(mm, np.array([16]), np.array([24]), Event.CLEAR), lambda: None)
    assert gpu.metrics["queue_quiesces"] == 1  # svms->evicted_ranges: the second eviction shares the quiesce
    assert gpu.client._pending_stall - before >= gpu.cfg.quiesce_ns
    sim.step()
    mm.invalidate(NotifierRange(mm, np.array([32]), np.array([40]), Event.CLEAR), lambda: None)
    assert gpu.metrics["queue_quiesces"] == 2


def test_a_registration_that_cannot_pin_every_page_releases_what_it_pinned():
    sim = simulation("secondary=rdma", "secondary.mode=pin", "workload.accesses=0", "workload.boot=false",
                     "guest.memory_mib=96", "host.memory_mib=64", "host.swap_mib=256", "host.oom=fail")  # fmt: skip
    nic = sim.secondaries[0]
    assert nic.metrics["registration_failures"] == 1 and "registered_pages" not in nic.metrics
    assert sim.host.pinned_pages() == 0 and (nic.spte < 0).all()  # __ib_umem_release unpinned them all
