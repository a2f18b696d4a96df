"""The API the checks assume: issue 28, item 6.

The names the docs use are exported from ``mmnsim``; a policy has operations for a per-page write-protect
(``mm.mkclean``, PROTECTION_PAGE) and a soft-dirty clear (``mm.clear_soft_dirty``, SOFT_DIRTY), so that no
policy needs to flip a flag; the order in which components' ``host_tick`` run is the documented one; and a
device or process given inline is composed from its plugin's YAML defaults, as ``secondary=NAME`` is.
"""

import re
from pathlib import Path

import numpy as np
from omegaconf import open_dict

import mmnsim
from conftest import config, simulation
from mmnsim import Event, HostPolicy, NoConfig, Simulation, hookimpl
from mmnsim.pagebits import P_DIRTY, P_HUGE, P_WRITE
from mmnsim.plugins.kvm import KVM
from mmnsim.plugins.rdma import RDMA

ROOT = Path(__file__).resolve().parent.parent
QUIET = ("guest.memory_mib=16", "host.memory_mib=64", "workload.accesses=0", "workload.boot=false")


def test_the_names_the_docs_use_are_exported():
    from mmnsim import secondary

    assert (mmnsim.SEQ, mmnsim.IN_PROGRESS, mmnsim.FAULT_BLOCK) == (secondary.SEQ, secondary.IN_PROGRESS,
                                                                    secondary.FAULT_BLOCK)  # fmt: skip
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for name in ("SEQ", "IN_PROGRESS", "FAULT_BLOCK"):
        assert f"state[{name}]" in guide or f"mmnsim.{name}" in guide, name
    assert "mm.mkclean" in guide and "mm.clear_soft_dirty" in guide


# -- write-protect and soft-dirty, through operations that raise the notifiers --


def _written(thp: str = "never"):
    sim = simulation(*QUIET, f"host.thp={thp}")
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64), np.ones(64, bool))
    sim.run_client(mm, None, np.arange(64, 96))  # read only: clean
    return sim, mm, kvm


def test_mkclean_cleans_the_pages_and_every_secondary_drops_them():
    sim, mm, kvm = _written()
    pages = np.arange(0, 96, 2)
    assert mm.mkclean(pages) == 32  # the dirty ones among them
    assert not (mm.flags[pages] & P_DIRTY).any() and (mm.flags[1:64:2] & P_DIRTY).all()
    assert (kvm.spte[pages] < 0).all() and (kvm.spte[1:64:2] >= 0).all()  # told per page: only those go
    assert sim.counter("invalidations_protection_page") == pages.size
    assert (mm.flags[pages] & P_WRITE).all() and not sim.check_invariants()
    sim.run_client(mm, kvm, pages, np.ones(pages.size, bool))  # a write faults in through KVM and re-dirties
    assert (mm.flags[pages] & P_DIRTY).all() and (kvm.spte[pages] == mm.pte[pages]).all()


def test_mkclean_of_a_page_of_a_thp_cleans_the_whole_folio():
    sim, mm, kvm = _written("always")
    assert (mm.flags[:512] & P_HUGE).all()
    mm.mkclean(np.array([5]))
    assert not (mm.flags[:512] & P_DIRTY).any() and sim.counter("invalidations_protection_page") == 1
    assert (mm.flags[:512] & P_HUGE).all() and not sim.check_invariants()  # cleaned, not split


def test_clear_soft_dirty_protects_the_whole_mm_but_pinned_pages():
    sim, mm, kvm = _written()
    assert mm.clear_soft_dirty() == 96
    assert not (mm.flags & P_DIRTY).any() and not (kvm.spte >= 0).any()
    assert sim.counter("invalidations_soft_dirty") == 1
    pinned = simulation(*QUIET, "secondary.mode=pin")
    mm = pinned.mms[0]
    pinned.run_client(mm, pinned.secondaries[0], np.arange(8), np.ones(8, bool))
    pinned.run_client(mm, None, np.arange(8, 16), np.ones(8, bool))
    assert mm.clear_soft_dirty() == 8  # pte_is_pinned: the pinned pages keep their write permission
    assert (mm.flags[:8] & P_DIRTY).all() and not (mm.flags[8:16] & P_DIRTY).any()


class KeepsWriteProtected(KVM):
    """Ignores write-protect events (PROTECTION_PAGE, SOFT_DIRTY): keeps its writable entries."""

    name = "keeps-wp"

    @hookimpl
    def invalidate_range_start(self, ranges):
        self.begin_invalidate(ranges)
        if ranges.event not in (Event.PROTECTION_PAGE, Event.SOFT_DIRTY):
            self.zap(ranges.start, ranges.end)


def test_a_secondary_ignoring_a_write_protect_keeps_its_writable_entries():
    """What the write-protect operations are for: a device that writes through an entry the kernel
    write-protected would write behind writeback's (or soft-dirty tracking's) back. The entry stays (so
    the invariant check after the invalidation, issue 28 item 1, has something to find)."""
    from test_checks import _plugin

    sim = simulation(*QUIET, "secondary.name=keeps-wp", plugins=[_plugin(KeepsWriteProtected)])
    mm, sec = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, sec, np.arange(16), np.ones(16, bool))
    mm.mkclean(np.arange(16))
    assert (sec.spte[:16] == mm.pte[:16]).all() and not (mm.flags[:16] & P_DIRTY).any()


# -- the order of host_tick --


def _recording(order):
    def pol(name):
        return type(name, (HostPolicy,), {"name": name, "Config": NoConfig,
                                         "host_tick": hookimpl(lambda self, sim: order.append(self.name))})  # fmt: skip

    def tick(self, sim):
        order.append(self.label)

    kvm = type("K", (KVM,), {"name": "kvm-rec", "host_tick": hookimpl(tick)})
    rdma = type("R", (RDMA,), {"name": "rdma-rec", "host_tick": hookimpl(tick)})
    early = hookimpl(tryfirst=True)(lambda self, sim: order.append("first"))
    first = type("First", (HostPolicy,), {"name": "first", "Config": NoConfig, "host_tick": early})

    class Module:
        @staticmethod
        @hookimpl
        def register_components():
            return [pol("a"), pol("b"), first, kvm, rdma]

        @staticmethod
        @hookimpl
        def host_tick(sim):
            order.append("module")

    return Module


def test_host_tick_runs_in_the_documented_order():
    """docs/plugins.md ("The hooks"): the secondary MMUs first, the newest first; then the policies in the
    reverse of their order in ``policies``; then module-level hooks; ``@hookimpl(tryfirst=True)`` first of all."""
    order: list[str] = []
    rdma = ("{secondary: {name: rdma-rec, mode: notifier, fault_ns: 1, region_start_mib: 0, region_mib: null, "
            "mtt_update_ns: 1, dma_unmap_page_ns: 1, memlock_mib: null, register_page_ns: 1}, "
            "workload: {name: uniform}}")  # fmt: skip
    cfg = config(*QUIET, "secondary.name=kvm-rec", f"guest.devices=[{rdma}]")
    with open_dict(cfg):
        cfg.policies = {"a": {}, "b": {}, "first": {}}
    sim = Simulation(cfg, plugins=[_recording(order)])
    sim.step()
    assert order == ["first", "rdma-rec[guest0]", "kvm-rec[guest0]", "b", "a", "module"]
    guide = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(r"secondary MMUs'? `host_tick` run first, the newest", guide)


# -- devices and processes given inline get their plugin's YAML defaults --


def test_a_device_or_process_given_inline_is_composed_from_its_yaml_with_its_defaults_list():
    """``faulty.yaml`` extends ``kvm.yaml`` through its defaults list: before, an inline ``{name: faulty}`` got
    only faulty.yaml's own keys read as they stand (``defaults`` an unknown key), not kvm's."""
    sim = simulation(*QUIET, "guest.devices=[{secondary: {name: faulty, fault: none}, workload: {name: zipf}}]",
                     "+processes=[{name: p, memory_mib: 4, node: 0, workload: {name: uniform},"
                     " secondary: {name: faulty_odp, fault: none}}]")  # fmt: skip
    device, process = sim.secondaries[1], sim.secondaries[2]
    assert device.name == "faulty" and device.cfg.zap_page_ns == 20 and device.cfg.fault == "none"
    assert process.name == "faulty_odp" and process.cfg.mtt_update_ns == 5000 and process.cfg.fault == "none"
    top = simulation(*QUIET, "secondary=faulty", "secondary.fault=none").secondaries[0]
    assert device.cfg == top.cfg  # as secondary=NAME composes it
