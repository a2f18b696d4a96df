"""Plugins read host state through views that stay read-only, and nothing the checks trust can be written by a
plugin: issue 28, item 3.

Every numpy array reachable from ``sim`` through public attributes (the host's tables, the per-mm views, the
counters, a secondary MMU's ``accessed``, the watermarks, a client's nodes, the run's violation counts, ...)
is found by walking the objects, not from a list, and each must refuse ``flags.writeable = True``, a write,
and a writable alias through ``np.asarray``, ``np.array(copy=False)``, ``view``, ``reshape`` or ``.base``.
The only writable arrays are those a plugin owns by design: a secondary MMU's table and state (``spte``,
``sflags``, ``state``), and a component's own attributes.
"""

from collections import deque

import numpy as np
import pytest

from conftest import simulation
from mmnsim import HostPolicy, NoConfig, PluginError, SecondaryMMU, Simulation, hookimpl
from mmnsim.invariants import KINDS
from mmnsim.pagebits import S_PINNED, SH_PINNED
from mmnsim.plugins.kvm import KVM
from mmnsim.secondary import STATE_SIZE
from mmnsim.sectables import SecondaryTables

SMALL = ("guest.memory_mib=16", "host.memory_mib=64", "workload.accesses=2000", "engine.accesses_per_tick=1024")
# A secondary MMU's own table and state: the plugin writes them (through zap, harvest_accessed, set_seq, ...).
PLUGIN_OWNED = {"spte", "sflags", "state"}
# Not walked into: plugin machinery and configuration, no host state.
NOT_STATE = {"pm", "registry", "catalogue", "cfg", "rng", "policies"}


def _is_framework(obj: object) -> bool:
    module = type(obj).__module__
    return module.startswith("mmnsim") and not module.startswith("mmnsim.plugins")


def _base_attributes(sim: Simulation) -> set[str]:
    """The attributes the framework itself gives every secondary MMU (a bare SecondaryMMU's): a plugin
    subclass's own attributes are the plugin's."""
    client = next(c for c in sim.clients if c.secondary is not None)
    bare = SecondaryMMU.__new__(SecondaryMMU)
    tables, sim._secondary_tables = sim._secondary_tables, SecondaryTables([client.mm.npages], STATE_SIZE)
    try:  # (its table in a run-wide set of its own: the run's has no room for another)
        SecondaryMMU.__init__(bare, sim, client, client.secondary.cfg)
    finally:
        sim._secondary_tables = tables
    props = {n for n, v in vars(SecondaryMMU).items() if isinstance(v, property)}
    return (set(vars(bare)) | props) - PLUGIN_OWNED


def host_views(sim: Simulation) -> dict[str, np.ndarray]:
    """Every numpy array reachable from ``sim`` through public attributes, by path (each array once),
    except a plugin's own."""
    secondary_attrs = _base_attributes(sim)
    found: dict[str, np.ndarray] = {}
    seen: set[int] = set()
    todo: deque[tuple[str, object]] = deque([("sim", sim)])  # breadth first: each array by its shortest path
    while todo:
        path, obj = todo.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            found[path] = obj
            continue
        if isinstance(obj, tuple | list):
            fields = getattr(obj, "_fields", None)  # a NamedTuple: the frame table, a page table, ...
            todo += [(f"{path}.{fields[i]}" if fields else f"{path}[{i}]", v) for i, v in enumerate(obj)]
            continue
        if isinstance(obj, dict):
            todo += [(f"{path}[{k!r}]", v) for k, v in obj.items()]
            continue
        if not (_is_framework(obj) or isinstance(obj, SecondaryMMU)):
            continue
        names = {n for n in dir(obj) if not n.startswith("_") and n not in NOT_STATE}
        if isinstance(obj, SecondaryMMU):
            names &= secondary_attrs
        for name in sorted(names):
            try:
                value = getattr(obj, name)
            except Exception:  # noqa: BLE001 (a property that does not apply to this object)
                continue
            if not callable(value) or isinstance(value, np.ndarray):
                todo.append((f"{path}.{name}", value))
    return found


@pytest.fixture(scope="module")
def sim():
    s = simulation(*SMALL, "secondary=gpu", "secondary.mode=pin", "secondary.device_memory_mib=2",
                   "guest.devices=[{secondary: {name: kvm}, workload: {name: uniform}}]", small=False)  # fmt: skip
    s.run()
    return s


def test_the_walk_finds_the_views_a_plugin_is_handed(sim):
    views = host_views(sim)
    found = {id(v) for v in views.values()}
    host, mm = sim.host, sim.mms[0]
    wanted = {"host.pt.pte": host.pt.pte, "host.pt.mm_flags": host.pt.mm_flags, "host.ft.key": host.ft.key,
              "host.ft.pin": host.ft.pin, "host.sw.key": host.sw.key, "host.ctr": host.ctr,
              "host.watermarks": host.watermarks, "host.distance": host.distance, "sim.violations": sim.violations,
              "mm.pte": mm.pte, "mm.flags": mm.flags, "mm.token": mm.token, "accessed": sim.secondaries[0].accessed,
              "device accessed": sim.secondaries[1].accessed, "vcpu_node": sim.clients[0].vcpu_node}  # fmt: skip
    missing = [name for name, v in wanted.items() if id(v) not in found]
    assert not missing, f"not found by the walk: {missing}; found: {sorted(views)}"
    assert not any(p.rsplit(".", 1)[-1] in PLUGIN_OWNED for p in views)
    assert len(views) > 30


def _tricks(view: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """What a plugin might try to get a writable array out of a read-only one."""
    out = [("the view", view), ("np.asarray", np.asarray(view)), ("np.array(copy=False)", np.array(view, copy=None)),
           ("view()", view.view()), ("reshape", view.reshape(-1) if view.size else view)]  # fmt: skip
    base = view.base
    while isinstance(base, np.ndarray):
        out.append((".base", base))
        base = base.base
    if isinstance(base, memoryview):
        out.append((".base (the buffer)", np.asarray(base)))
    return out


def test_every_view_refuses_to_become_writable(sim):
    views = host_views(sim)
    writable = []
    for path, view in views.items():
        for trick, arr in _tricks(view):
            if arr.flags.writeable:
                writable.append(f"{path} ({trick}): writeable")
                continue
            try:
                arr.flags.writeable = True
                writable.append(f"{path} ({trick}): flags.writeable = True accepted")
            except ValueError:
                pass
            if arr.size:
                with pytest.raises(ValueError, match="read-only"):
                    arr.reshape(-1)[:1] = arr.reshape(-1)[:1]
    assert not writable, "\n".join(writable)


def test_views_are_zero_copy_and_the_kernels_keep_their_writable_arrays(sim):
    host, mm, sec = sim.host, sim.mms[0], sim.secondaries[0]
    for view, own in [(host.pt.pte, host._pt.pte), (host.ft.pin, host._ft.pin), (host.ctr, host._ctr),
                      (mm.pte, mm._pte), (sec.accessed, sec._accessed), (sim.violations, sim._violations)]:  # fmt: skip
        assert np.shares_memory(view, own) and own.flags.writeable and not view.flags.writeable
    before = int(host.ctr[0])
    sim.run_client(mm, None, np.arange(8))
    assert int(host.ctr[0]) > before  # the framework's writes show through the view


# -- what a plugin may write is not what the checks trust --


class Rebinds(KVM):
    """Swaps its own table for a smaller array of another dtype, and reshapes the state in place."""

    name = "rebinds"

    @hookimpl
    def host_tick(self, sim):
        self.spte = np.zeros(3, dtype=np.int8)
        self.sflags = np.zeros(3, dtype=np.int64)
        self.state.shape = (1, -1)


def test_rebinding_or_reshaping_a_plugin_table_changes_nothing_the_framework_reads():
    from test_checks import _plugin

    sim = simulation(*SMALL, "secondary.name=rebinds", small=False, plugins=[_plugin(Rebinds)])
    m = sim.run()  # the kernels and the checks work on the framework's own views of the memory
    assert m["accesses"] > 0 and m["invariant_violations"] == 0, sim.violation_messages
    assert sim.secondaries[0]._spte.shape == (sim.mms[0].npages,) and sim.secondaries[0]._state.ndim == 1


def _pinned_kvm():
    sim = simulation(*SMALL, "secondary.mode=pin", "workload.accesses=0", "workload.boot=false", small=False)
    mm, kvm = sim.mms[0], sim.secondaries[0]
    sim.run_client(mm, kvm, np.arange(64), np.ones(64, bool))
    assert (kvm._accessed[:64] & SH_PINNED).all() and (kvm.sflags[:64] & S_PINNED).all()
    assert not sim.check_invariants()
    return sim, mm, kvm


def test_pins_are_counted_by_the_frameworks_record_not_the_plugins_bit():
    sim, mm, kvm = _pinned_kvm()
    kvm.sflags[:64] &= np.uint8(0xFF ^ S_PINNED)  # the plugin clears its S_PINNED bits: the pins stay accounted
    assert not sim.check_invariants()
    kvm.zap(np.array([0]), np.array([64]))  # and zap releases them all, by the framework's record
    assert sim.host.pinned_pages() == 0 and not sim.check_invariants()


def test_a_forged_pinned_bit_releases_no_pin():
    sim, mm, kvm = _pinned_kvm()
    sim.run_client(mm, None, np.arange(64, 72), np.ones(8, bool))  # the CPU's pages: no pin
    kvm.spte[64:72] = mm.pte[64:72]  # the plugin maps them itself and claims to pin them
    kvm.sflags[64:72] |= S_PINNED
    kvm.zap(np.array([64]), np.array([72]))
    assert sim.host.pinned_pages() == 64 and not sim.check_invariants()  # no pin count went below zero


def test_a_pinned_entry_rewritten_by_the_plugin_is_a_pin_violation_not_a_crash():
    sim, mm, kvm = _pinned_kvm()
    kvm.spte[0] = 10**9  # a frame number far past the host's memory
    kvm.spte[1] = int(mm.pte[100]) if mm.pte[100] >= 0 else 5  # another frame, which it never pinned
    report = sim.check_invariants()
    kinds = {k for k, c in zip(KINDS, report.counts, strict=True) if c}
    assert "isolation" in kinds and "pin" in kinds, report.messages
    assert any("which is no frame of the host" in m and "Culprit: kvm[guest0]" in m for m in report.messages)
    kvm.zap(np.array([0]), np.array([mm.npages]))  # no unpin of a frame it never pinned, no index out of range
    assert (sim.host.ft.pin < 60000).all()
    sim.run_client(mm, kvm, np.arange(8), np.ones(8, bool))  # the access kernel survives it too


def test_an_entry_far_outside_the_host_faults_instead_of_reading_past_memory():
    sim = simulation(*SMALL, "workload.accesses=0", "workload.boot=false", small=False)
    mm, kvm = sim.mms[0], sim.secondaries[0]
    kvm.spte[:32] = 2**31 - 1  # every entry "maps" a frame no host has
    sim.run_client(mm, kvm, np.arange(32), np.ones(32, bool))  # a fault each: the entries are rebuilt
    assert (kvm.spte[:32] == mm.pte[:32]).all() and not sim.check_invariants()


class NarrowsItsRegion(KVM):
    """Claims, after construction, to be young-blind and to map nothing: the checks keep what it said first."""

    name = "narrows"

    @hookimpl
    def host_tick(self, sim):
        self.young = False
        self.interval = True


def test_class_attributes_read_by_the_checks_are_taken_at_construction():
    from test_checks import _plugin

    sim = simulation(*SMALL, "secondary.name=narrows", small=False, plugins=[_plugin(NarrowsItsRegion)])
    sec = sim.secondaries[0]
    with pytest.raises(AttributeError):
        sec.region = (0, 1)  # read-only
    sim.step()
    assert sec._young and not sec._interval


class FlipsAView(HostPolicy):
    """Tries to make the page table writable again and set a flag through it."""

    name = "flipper"
    Config = NoConfig

    @hookimpl
    def host_tick(self, sim):
        flags = sim.mms[0].flags
        flags.flags.writeable = True
        flags[0] |= 4


def test_a_policy_flipping_a_view_writable_fails_naming_it_and_its_hook():
    from omegaconf import open_dict
    from test_checks import _plugin

    from conftest import config

    cfg = config(*SMALL)
    with open_dict(cfg):
        cfg.policies["flipper"] = {}
    sim = Simulation(cfg, plugins=[_plugin(FlipsAView)])
    flags = sim.mms[0].flags.copy()
    with pytest.raises(
        PluginError, match=r"policy 'flipper' wrote to host state in host_tick through a read-only view"
    ):
        sim.step()
    assert (sim.mms[0].flags == flags).all()


def test_the_checks_switches_cannot_be_turned_off_by_a_plugin():
    import dataclasses

    sim = simulation(*SMALL, small=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sim.engine.check_invariants = False
    with pytest.raises(ValueError, match="read-only"):
        sim.violations[:] = 0


class MovesTheRange(KVM):
    """Rewrites the batch it was handed, so that the operation (and every subscriber after it) would change
    other pages than it told the chain about."""

    name = "moves-range"

    @hookimpl
    def invalidate_range_start(self, ranges):
        ranges.start[:] = 0
        super().invalidate_range_start(ranges)


def test_a_notifier_range_handed_to_a_plugin_cannot_be_changed():
    from test_checks import _plugin

    sim = simulation(*SMALL, "workload.accesses=0", "workload.boot=false", "secondary.name=moves-range", small=False,
                     plugins=[_plugin(MovesTheRange)])  # fmt: skip
    mm = sim.mms[0]
    sim.run_client(mm, None, np.arange(64), np.ones(64, bool))
    with pytest.raises(PluginError, match=r"'moves-range\[guest0\]' wrote to host state in invalidate_range_start"):
        mm.discard(np.array([40, 50]))
    assert not sim.check_invariants()
