"""Broken plugins the checks must catch, each written for one class of bug (not plugins/faulty.py's): a
secondary MMU that ignores protection changes, young ops that never clear or answer from bits the plugin set
itself, policies that write host state behind the notifiers' back, and secondaries that skip the sequence
protocol while a fault sleeps in a race window. Each is caught with the right kind, naming the culprit."""

import numpy as np
import pytest
from omegaconf import open_dict

from conftest import config, simulation
from mmnsim import HostPolicy, NoConfig, PluginError, Simulation, hookimpl, swap_out
from mmnsim.invariants import KINDS
from mmnsim.pagebits import P_HUGE, S_ACCESSED, clear_mask
from mmnsim.plugins.kvm import KVM
from mmnsim.plugins.rdma import RDMA

QUIET = ("workload.accesses=0", "workload.boot=false", "guest.memory_mib=16", "host.memory_mib=64")


def _plugin(*components):
    class Plugin:
        @staticmethod
        @hookimpl
        def register_components():
            return list(components)

    return Plugin


def _kinds(report) -> dict[str, int]:
    return {k: int(c) for k, c in zip(KINDS, report.counts, strict=True) if c}


# -- permission coherence --


class IgnoresProtection(KVM):
    """Zaps on every event but a protection change (mprotect, NUMA's PROT_NONE window): keeps its entries."""

    name = "prot-deaf"

    @hookimpl
    def invalidate_range_start(self, ranges):
        if ranges.event.name == "PROTECTION_VMA":
            self.begin_invalidate(ranges)
            return
        super().invalidate_range_start(ranges)


def _written(*overrides):
    sim = simulation(*QUIET, "secondary.name=prot-deaf", *overrides, plugins=[_plugin(IgnoresProtection)])
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64), np.ones(64, bool))  # writable entries for pages 0..63
    assert not sim.check_invariants()
    return sim, mm, kvm


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda mm: mm.mprotect(0, 64, "r"), "writable, but the VMA is read-only"),
        (lambda mm: mm.mprotect(0, 64, "none"), "present, but the VMA forbids access"),
        (lambda mm: mm.change_prot_numa(0, 64, skip_pinned=False), "present, but the PTE is PROT_NONE"),
    ],
    ids=["mprotect-r", "mprotect-none", "numa-protnone"],
)
def test_a_secondary_that_ignores_protection_changes_is_a_permission_violation(change, words):
    sim, mm, kvm = _written()
    change(mm)
    report = sim.check_invariants()
    assert _kinds(report) == {"permission": 64}, report.messages
    message = report.messages[0]
    assert message.startswith("permission: prot-deaf[guest0] maps page 0 (frame") and words in message, message
    assert "Culprit: prot-deaf[guest0] (prot-deaf[guest0] was told (invalidate_range_start)" in message
    assert "last changed by" in message and "of mm 'guest0'" in message  # the mm operation that changed it


def test_kvm_drops_its_entries_on_a_protection_change():
    sim = simulation(*QUIET)
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64), np.ones(64, bool))
    mm.mprotect(0, 64, "r")
    mm.change_prot_numa(64, 128, skip_pinned=False)
    assert not sim.check_invariants()


# -- young ops judged by their postcondition and by the framework's own accessed bits --


class NeverClears(KVM):
    """Answers every young op correctly, but never clears its accessed bits."""

    name = "sticky"

    def _age(self, start, end, flush):
        return self.harvest_accessed(start, end, clear=False)


class OwnAccessedBits(KVM):
    """Sets the accessed bit of every entry it holds each tick, and answers from its own bits."""

    name = "self-young"

    @hookimpl
    def host_tick(self, sim):
        self.sflags[self.spte >= 0] |= S_ACCESSED


def _young_sim(cls):
    sim = simulation(*QUIET, f"secondary.name={cls.name}", plugins=[_plugin(cls)])
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64))
    return sim, mm, kvm


def test_a_young_op_that_never_clears_is_an_accessed_violation():
    sim, mm, kvm = _young_sim(NeverClears)
    start, end = np.arange(0, 64, 8), np.arange(8, 72, 8)
    young = mm.chain.young("clear_flush_young", start, end)
    assert young.all()  # a correct answer ...
    assert sim.violations[KINDS.index("accessed")] == 8  # ... but its bits still read young afterwards
    message = sim.violation_messages[-1]
    assert message.startswith("accessed: sticky[guest0] answered clear_flush_young but left its accessed bits set")
    assert "Culprit: sticky[guest0] in clear_flush_young" in message


def test_a_young_op_answered_from_bits_the_plugin_set_itself_is_an_accessed_violation():
    sim, mm, kvm = _young_sim(OwnAccessedBits)
    start, end = np.arange(0, 64, 8), np.arange(8, 72, 8)
    assert mm.chain.young("clear_flush_young", start, end).all() and not sim.violations.any()  # accessed: honest
    sim.step()  # its host_tick marks every entry accessed; nothing accessed them
    young = mm.chain.young("clear_flush_young", start, end)
    assert young.all() and sim.violations[KINDS.index("accessed")] == 8
    message = sim.violation_messages[-1]
    assert "answered clear_flush_young young for 8 ranges none of its entries was accessed in" in message
    assert "Culprit: self-young[guest0] in clear_flush_young" in message


def test_kvm_answers_young_ops_truthfully():
    sim, mm, kvm = _young_sim(KVM)
    start, end = np.arange(0, 128, 8), np.arange(8, 136, 8)
    assert (mm.chain.young("clear_flush_young", start, end) == (start < 64)).all()
    assert not mm.chain.young("clear_young", start, end).any()
    sim.run_client(mm, kvm, np.array([3]))
    assert mm.chain.young("test_young", np.array([3, 4]), np.array([4, 5])).tolist() == [True, False]
    assert not sim.violations.any(), sim.violation_messages


def test_a_plugin_cannot_write_the_shadow_accessed_bits():
    sim, mm, kvm = _young_sim(KVM)
    with pytest.raises(ValueError, match="read-only"):
        kvm.accessed[:] = 0


# -- host state out of plugin reach --


class ForgesContent(HostPolicy):
    """Rewrites a page's content together with the reference the integrity check trusts."""

    name = "forger"
    Config = NoConfig

    @hookimpl
    def host_tick(self, sim):
        mm = sim.mms[0]
        frame = int(mm.pte[0])
        sim.host.ft.token[frame] = 7
        mm.token[0] = 7


class MovesPagesSilently(HostPolicy):
    """Points a PTE at another frame without an invalidation (no notifier is raised)."""

    name = "silent-mover"
    Config = NoConfig

    @hookimpl
    def host_tick(self, sim):
        sim.mms[0].pte[0] = sim.mms[0].pte[1]


class WritesTheFrameTable(HostPolicy):
    name = "pin-forger"
    Config = NoConfig

    @hookimpl
    def reclaim(self, sim, nr_pages, direct):
        sim.host.ft.pin[:] = 0
        return 0


@pytest.mark.parametrize(
    "policy, hook", [(ForgesContent, "host_tick"), (MovesPagesSilently, "host_tick"), (WritesTheFrameTable, "reclaim")]
)
def test_a_policy_writing_host_state_fails_at_once_naming_it_and_its_hook(policy, hook):
    cfg = config(*QUIET, "workload.boot=true")
    with open_dict(cfg):
        cfg.policies[policy.name] = {}
    sim = Simulation(cfg, plugins=[_plugin(policy)])
    with pytest.raises(PluginError, match=rf"policy '{policy.name}' wrote to host state in {hook} through a read-only"):
        sim.run()
        sim._reclaim(32, direct=True)


def test_plugins_get_read_only_views_and_their_own_tables_writable():
    sim = simulation(*QUIET)
    mm, kvm = sim.mms[0], sim.secondaries[0]
    host = sim.host
    for a in (mm.pte, mm.flags, mm.token, *host.pt, *host.ft, *host.sw):
        if isinstance(a, np.ndarray):
            assert not a.flags.writeable
    assert kvm.spte.flags.writeable and kvm.sflags.flags.writeable


# -- race windows: a fault sleeps, the host invalidates, the sequence protocol must make it retry --


class ForgetsTheSequence(KVM):
    """Lowers in_progress at invalidate_range_end but never bumps its sequence."""

    name = "seqless"

    @hookimpl
    def invalidate_range_end(self, ranges):
        seq = self.state.copy()
        self.end_invalidate()
        bumped = self.state > seq
        self.state[bumped] = seq[bumped]


class ForgetsSetSeq(RDMA):
    """An interval subscriber that zaps but never records cur_seq."""

    name = "seqless-odp"

    def set_seq(self, cur_seq):
        pass


@pytest.mark.parametrize("cls, base", [(ForgetsTheSequence, "kvm"), (ForgetsSetSeq, "rdma")])
def test_a_secondary_skipping_the_sequence_protocol_installs_stale_entries_in_race_windows(cls, base):
    overrides = (f"secondary={base}", f"secondary.name={cls.name}", "engine.race_window=0.05")
    sim = simulation(*overrides, plugins=[_plugin(cls)])
    m = sim.run()
    assert m["race_windows"] > 0
    assert m["coherence_violations"] + m["isolation_violations"] > 0
    message = next(msg for msg in sim.violation_messages if msg.startswith(("coherence", "isolation")))
    assert f"Culprit: {cls.name}[guest0]" in message and "race window" in message, message
    # Without race windows nothing can be in flight while an invalidation runs: the bug stays invisible.
    quiet = simulation(*overrides[:-1], "engine.race_window=0", plugins=[_plugin(cls)])
    assert quiet.run()["invariant_violations"] == 0


@pytest.mark.parametrize("secondary", ["kvm", "rdma"])
def test_a_correct_secondary_retries_after_a_race_window_and_stays_coherent(secondary):
    sim = simulation(f"secondary={secondary}", "engine.race_window=0.05")
    m = sim.run()
    assert m["race_windows"] > 0 and m["fault_retries"] >= m["race_windows"] // 2
    assert m["invariant_violations"] == 0, sim.violation_messages[:3]
    again = simulation(f"secondary={secondary}", "engine.race_window=0.05").run()
    assert again["race_windows"] == m["race_windows"] and again["fault_retries"] == m["fault_retries"]  # seeded


# -- blame on the component that kept or installed the entry --


class WildMapper(KVM):
    """Installs, in its own host_tick, page 0 on page 1's frame: an entry no notifier ever asked it to drop."""

    name = "wild"

    @hookimpl
    def host_tick(self, sim):
        if self.spte[1] >= 0:
            self.spte[0] = self.spte[1]


def test_an_entry_a_subscriber_installs_itself_is_caught_after_its_hook_and_blamed_on_it():
    sim = simulation(*QUIET, "secondary.name=wild", plugins=[_plugin(WildMapper)])
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(4), np.ones(4, bool))
    sim.call_hook("host_tick", sim=sim)
    message = sim.violation_messages[0]
    assert message.startswith("coherence: wild[guest0] maps page 0 to frame"), message
    assert "Culprit: wild[guest0], which installed an entry its notifier was never asked to drop" in message
    assert message.endswith("[after secondary 'wild[guest0]' in host_tick]"), message
    kvm.zap(np.array([0]), np.array([1]))  # dropped before the end of the tick: already reported
    assert not sim.check_invariants()


def test_lost_content_is_blamed_on_the_secondary_that_wrote_through_its_stale_entry():
    sim = simulation("secondary=faulty", "secondary.fault=ignore_invalidate", "workload.write_fraction=1")
    sim.run()
    integrity = [m for m in sim.violation_messages if m.startswith("integrity")]
    assert integrity, sim.violation_messages[:3]
    assert "Culprit: faulty[guest0], which still maps page" in integrity[0] and "wrote through it" in integrity[0]


def test_reclaim_of_an_mm_without_subscribers_still_records_who_changed_its_pages():
    sim = simulation(*QUIET, "secondary=none")
    mm = sim.mms[0]
    sim.run_client(mm, None, np.arange(8), np.ones(8, bool))
    frames = mm.pte[:8].astype(np.int64)
    with sim.actors.acting("policy 'test' in reclaim"):
        assert swap_out(sim, frames) == 8
    assert sim.actors.who_changed(mm.base + 3) == "policy 'test' in reclaim (CLEAR of mm 'guest0') at tick 0"


# -- THP structure --


def test_dontneed_of_one_page_on_a_2mib_boundary_splits_the_thp():
    sim = simulation(*QUIET, "host.thp=always")
    mm = sim.mms[0]
    sim.run_client(mm, None, np.arange(512), np.ones(512, bool))
    assert (mm.flags[:512] & P_HUGE).all()
    mm.madvise_dontneed(0, 1)
    assert not (mm.flags[:512] & P_HUGE).any()
    assert not sim.check_invariants()


def test_a_partly_flagged_thp_is_reported():
    sim = simulation(*QUIET, "host.thp=always")
    mm = sim.mms[0]
    sim.run_client(mm, None, np.arange(512), np.ones(512, bool))
    mm._flags[1:512] &= clear_mask(P_HUGE)  # as the split bug left it, the other way round
    report = sim.check_invariants()
    assert _kinds(report) == {"conservation": 1}
    assert "the THP at page 0 of mm 'guest0' is flagged huge on 1 of its 512 pages" in report.messages[0]


# -- a run with violations fails --

TINY = ("guest.memory_mib=16", "host.memory_mib=12", "host.swap_mib=64", "workload.accesses=20000",
        "engine.accesses_per_tick=4096", "secondary=faulty")  # fmt: skip


def test_a_run_with_violations_exits_3_unless_allowed(workdir):
    from conftest import cli

    bad = cli(*TINY, "secondary.fault=ignore_invalidate", "hydra.run.dir=bad", cwd=workdir)
    assert bad.returncode == 3, bad.stderr[-2000:]
    assert "invariant violations (first: " in bad.stderr and "engine.allow_violations=true" in bad.stderr
    assert (workdir / "bad" / "violations.txt").exists()  # and the results are written
    allowed = cli(*TINY, "secondary.fault=ignore_invalidate", "engine.allow_violations=true", "hydra.run.dir=ok",
                  cwd=workdir)  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    sweep = cli("-m", *TINY, "secondary.fault=none,ignore_invalidate", "hydra.sweep.dir=sweep", cwd=workdir)
    assert sweep.returncode == 3, sweep.stderr[-2000:]
    listed = [line for line in sweep.stderr.splitlines() if line.startswith("mmnsim: invariant violated in")]
    assert len(listed) == 1 and "faulty[guest0] returned from invalidate_range_start" in listed[0], sweep.stderr[-2000:]
