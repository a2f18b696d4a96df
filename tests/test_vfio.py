"""VFIO passthrough (plugins/vfio.py): all of guest RAM pinned at start, all or nothing."""

import pytest

from conftest import run, simulation
from mmnsim import ConfigError

NIC = "guest.devices=[{secondary:{name:vfio},workload:{name:uniform,accesses:20000,boot:false}}]"


def test_a_passthrough_device_pins_all_of_guest_ram_at_start_and_never_faults():
    sim = simulation(NIC, "guest.memory_mib=32", "host.memory_mib=128", small=False)
    vfio = sim.secondaries[1]
    assert sim.host.pinned_pages() == sim.mms[0].npages  # before the guest ran an access
    assert not sim.mms[0].chain.subscribers() or vfio not in sim.mms[0].chain.subscribers()
    m = sim.run()
    assert m["vfio.registered_pages"] == sim.mms[0].npages and m["vfio.secondary_faults"] == 0
    assert m["vfio.accesses"] == 20000 and m["vfio.access_errors"] == 0
    assert m["invariant_violations"] == 0


def test_the_pinned_guest_is_never_swapped_its_neighbour_is():
    _, m = run(NIC, "guest.memory_mib=64", "host.memory_mib=96", "host.swap_mib=256",
               "processes=[{name: other, memory_mib: 64, node: 0, workload: {name: uniform, accesses: 200000}}]",
               small=False)  # fmt: skip
    assert m["pinned_pages_peak"] == 64 * 256 and m["swap_outs"] > 0
    assert m["kvm.major_faults"] == 0  # every swap-in is the other process's
    assert m["invariant_violations"] == 0


@pytest.mark.parametrize("extra", [("+guest.devices.0.secondary.memlock_mib=16",),
                                   ("host.memory_mib=24", "host.swap_mib=256")])  # fmt: skip
def test_a_pin_that_cannot_complete_fails_whole_and_the_vm_does_not_start(extra):
    sim = simulation(NIC, "guest.memory_mib=32", "host.memory_mib=128", *extra, small=False)
    assert sim.host.pinned_pages() == 0  # vfio_remove_dma unpinned what was pinned
    assert sim.tenants[0].killed and sim.mms[0].exited
    m = sim.run()
    assert m["vfio.start_failures"] == 1 and m["accesses"] == 0
    assert m["invariant_violations"] == 0


def test_notifier_mode_is_refused_naming_the_alternatives():
    with pytest.raises(ConfigError) as err:
        simulation(NIC, "+guest.devices.0.secondary.mode=notifier")
    assert "mode must be pin" in str(err.value) and "iommu_sva" in str(err.value)
