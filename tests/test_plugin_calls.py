"""No crash from any plugin call: issue 28, item 5.

Every public operation checks its arguments before it changes anything (a negative page no longer wraps
around, a collapse past the end of an mm no longer writes past the page table in compiled code), and a bad
one is a ``PluginError`` naming the plugin and the operation; every call into a plugin, hook or not, is
wrapped as the hooks are (one line naming plugin and method, exit 2, the traceback in the log file only);
and a run whose only violations are the access-time counts of ``engine.check_accesses`` reports them.
The seeded fuzz over every operation runs in a subprocess (``tests/fuzz_operations.py``), so that a crash of
the process is a failure and not the end of the test run.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fuzz_operations
import numpy as np
import pytest
from omegaconf import open_dict

from conftest import cli, config, simulation
from mmnsim import (
    ConfigError,
    HostPolicy,
    NoConfig,
    OperationError,
    PluginError,
    Simulation,
    collapse_huge_page,
    hookimpl,
    referenced,
)
from mmnsim.plugins.kvm import KVM
from mmnsim.plugins.uniform import Uniform

QUIET = ("guest.memory_mib=16", "host.memory_mib=64", "workload.accesses=0", "workload.boot=false")
TINY = ("guest.memory_mib=16", "host.memory_mib=12", "host.swap_mib=64", "workload.accesses=20000",
        "engine.accesses_per_tick=4096")  # fmt: skip
FUZZ_SEED = int(os.environ.get("MMNSIM_FUZZ_SEED", "0"))
FUZZ_CASES = int(os.environ.get("MMNSIM_FUZZ_CASES", "1500"))


def _plugin(*components, **module_hooks):
    attrs = {"register_components": staticmethod(hookimpl(lambda: list(components)))}
    attrs |= {name: staticmethod(hookimpl(fn)) for name, fn in module_hooks.items()}
    return type("Plugin", (), attrs)


def _state(sim) -> bytes:
    host = sim.host
    return b"".join(np.ascontiguousarray(a).tobytes() for a in (*host._pt, *host._ft, *host._sw))


# -- the operations the issue names --


@pytest.fixture
def busy():
    sim = simulation(*QUIET, "host.thp=always")
    mm = sim.mms[0]
    sim.run_client(mm, sim.secondaries[0], np.arange(1024), np.ones(1024, bool))
    return sim, mm


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda sim, mm: mm.discard(np.array([-1])), "discard of mm 'guest0': pages must be in [0, 4096), got -1"),
        (lambda sim, mm: sim.migrate(mm, np.array([-3]), 0), "migrate: pages must be in [0, 4096), got -3"),
        (lambda sim, mm: collapse_huge_page(sim, mm, mm.npages, 0), "collapse_huge_page: first must be in [0, 4096)"),
        (lambda sim, mm: collapse_huge_page(sim, mm, mm.npages - 512 + 1, 0), "aligned 2 MiB region"),
        (lambda sim, mm: referenced(sim, np.array([-1])), "referenced: frames must be in [0, "),
        (lambda sim, mm: mm.discard(np.array([2**32 + 3])), "got 4294967299"),  # not 3: no int32 wrap-around
        (lambda sim, mm: sim.run_client(mm, None, np.array([2**32 + 3])), "run_client: pages must be in [0, 4096)"),
        (lambda sim, mm: mm.munmap(0, float("nan")), "munmap of mm 'guest0': end must be an integer, got nan"),
    ],
    ids=[
        "discard-negative",
        "migrate-negative",
        "collapse-past-end",
        "collapse-unaligned",
        "referenced-negative",
        "discard-int32-wrap",
        "access-int32-wrap",
        "munmap-nan",
    ],  # fmt: skip
)
def test_an_operation_out_of_range_is_refused_before_it_changes_anything(busy, call, words):
    sim, mm = busy
    before = _state(sim)
    with pytest.raises(OperationError) as info:
        call(sim, mm)
    assert words in str(info.value)
    assert _state(sim) == before and not sim.check_invariants()


class CallsOutOfRange(HostPolicy):
    """collapse_huge_page past the end of the mm, from its hook: before the check, the compiled collapse
    wrote past the page table (a crash of the process, or memory silently overwritten)."""

    name = "out-of-range"
    Config = NoConfig

    @hookimpl
    def host_tick(self, sim):
        collapse_huge_page(sim, sim.mms[0], sim.mms[0].npages, 0)


def test_an_operation_out_of_range_from_a_hook_is_a_plugin_error_naming_the_plugin_and_the_operation():
    cfg = config(*QUIET)
    with open_dict(cfg):
        cfg.policies[CallsOutOfRange.name] = {}
    sim = Simulation(cfg, plugins=[_plugin(CallsOutOfRange)])
    with pytest.raises(PluginError) as info:
        sim.step()
    assert str(info.value) == (
        "policy 'out-of-range' called an operation with a bad argument in host_tick: collapse_huge_page: first "
        "must be in [0, 4096), got 4096"
    )


# -- the fuzz: every public operation, odd arguments, from a hook --


def test_every_public_operation_is_fuzzed_or_says_why_not():
    listed = {*fuzz_operations.OPERATIONS, *fuzz_operations.NO_ARGUMENTS, *fuzz_operations.PLUGIN_IMPLEMENTED,
              *fuzz_operations.HELPERS, *fuzz_operations.CONFIG_TIME}  # fmt: skip
    missing = fuzz_operations.public_operations() - listed
    assert not missing, f"public operations the fuzz does not know (add them to tests/fuzz_operations.py): {missing}"
    assert "MM.mkclean" in fuzz_operations.OPERATIONS and "collapse_huge_page" in fuzz_operations.OPERATIONS


def test_every_public_operation_called_with_odd_arguments_from_a_hook_fails_cleanly(tmp_path):
    log = tmp_path / "tracebacks.log"
    script = Path(__file__).with_name("fuzz_operations.py")
    out = subprocess.run([sys.executable, str(script), str(FUZZ_SEED), str(FUZZ_CASES), str(log)],
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert out.returncode == 0, f"the process died ({out.returncode}): {out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["failures"], "\n".join(result["failures"][:20])
    for name in fuzz_operations.OPERATIONS:
        rejected = result["results"][name].get("rejected", 0)
        assert rejected > 0, f"{name}: no odd argument was refused"
        assert result["named"].get(name, 0) == rejected, f"{name}: refused without naming it: {result['unnamed']}"
    assert "Traceback" in log.read_text()  # the plugins' tracebacks: in the log, not on the console


# -- calls into a plugin, wrapped as the hooks are --


class Raises(KVM):
    """Raises in the method named by ``where``."""

    name = "raises"
    where = ""

    def _maybe(self, method):
        if self.where == method:
            raise RuntimeError(f"injected in {method}")

    def attach(self):
        self._maybe("attach")
        super().attach()

    def walk_refs(self, huge):
        self._maybe("walk_refs")
        return super().walk_refs(huge)

    def tlb_huge(self):
        self._maybe("tlb_huge")
        return super().tlb_huge()

    def fault_cost_ns(self, faults):
        self._maybe("fault_cost_ns")
        return super().fault_cost_ns(faults)

    def teardown(self):
        self._maybe("teardown")
        super().teardown()

    @hookimpl
    def invalidate_range_start(self, ranges):
        self._maybe("invalidate_range_start")
        super().invalidate_range_start(ranges)


@pytest.mark.parametrize("where", ["attach", "walk_refs", "tlb_huge", "fault_cost_ns", "teardown"])
def test_a_secondary_raising_outside_its_hooks_is_a_plugin_error_naming_it_and_the_method(where):
    cls = type("Raises", (Raises,), {"where": where})
    with pytest.raises(PluginError) as info:
        sim = simulation(*TINY, "secondary.name=raises", plugins=[_plugin(cls)])
        sim.run(teardown=True)
    assert str(info.value) == f"secondary MMU 'raises[guest0]' raised in {where}: RuntimeError('injected in {where}')"


def test_invalidate_self_delivers_as_the_chain_does():
    from mmnsim import Event, single_pages

    cls = type("Raises", (Raises,), {"where": "invalidate_range_start"})
    sim = simulation(*QUIET, "secondary.name=raises", plugins=[_plugin(cls)])
    sec = sim.secondaries[0]
    with pytest.raises(PluginError, match=r"'raises\[guest0\]' raised in invalidate_range_start: RuntimeError"):
        sec.invalidate_self(single_pages(sim.mms[0], np.array([0]), Event.CLEAR))


def test_a_non_finite_cost_from_a_plugin_is_refused():
    with pytest.raises(PluginError, match=r"'faulty\[guest0\]' returned nan from fault_cost_ns; expected a finite"):
        simulation(*TINY, "secondary=faulty", "secondary.fault=nan_fault_cost").run()


def test_a_plugin_raising_in_fault_around_is_a_plugin_error():
    with pytest.raises(PluginError, match=r"'faulty\[guest0\]' raised in fault_around: RuntimeError\('injected"):
        simulation(*TINY, "secondary=faulty", "secondary.fault=raise_in_fault_around").run()


class BrokenRegion(KVM):
    name = "broken-region"

    @classmethod
    def region_of(cls, cfg, mm_pages):
        return (0, mm_pages + 1)


class RaisingRegion(KVM):
    name = "raising-region"

    @classmethod
    def region_of(cls, cfg, mm_pages):
        return 1 / 0


@dataclass
class PostInitConfig:
    n: int = 0

    def __post_init__(self):
        raise KeyError("boom")


class RaisingConfig(HostPolicy):
    name = "raising-config"
    Config = PostInitConfig


class RaisingInit(HostPolicy):
    name = "raising-init"
    Config = NoConfig

    def __init__(self, sim, cfg):
        raise RuntimeError("no")


class RaisingWorkload(Uniform):
    name = "raising-workload"

    def pages(self, n):
        raise RuntimeError("no pages")


class BadReclaim(HostPolicy):
    name = "bad-reclaim"
    Config = NoConfig

    @hookimpl
    def reclaim(self, sim, nr_pages, direct):
        return "plenty"


class BadMetrics(HostPolicy):
    name = "bad-metrics"
    Config = NoConfig

    @hookimpl
    def collect_metrics(self, sim):
        return [1, 2]


def _with_policy(cls, *overrides):
    cfg = config(*QUIET, *overrides)
    with open_dict(cfg):
        cfg.policies = {cls.name: {}}
    return Simulation(cfg, plugins=[_plugin(cls)])


@pytest.mark.parametrize(
    "make, error, words",
    [
        (
            lambda: simulation(*QUIET, "secondary.name=broken-region", plugins=[_plugin(BrokenRegion)]),
            ConfigError,
            "secondary: secondary MMU 'broken-region' returned (0, 4097) from region_of; expected (start, end)",
        ),
        (
            lambda: simulation(*QUIET, "secondary.name=raising-region", plugins=[_plugin(RaisingRegion)]),
            ConfigError,
            "secondary: secondary MMU 'raising-region' raised in region_of or device_memory_pages: ZeroDivisionError",
        ),
        (
            lambda: _with_policy(RaisingConfig),
            ConfigError,
            "policies.raising-config: policy 'raising-config' raised in PostInitConfig.__post_init__: KeyError('boom') "
            "(test_plugin_calls.py, line",
        ),
        (
            lambda: _with_policy(RaisingInit),
            PluginError,
            "policy 'raising-init' raised in __init__: RuntimeError('no')",
        ),
        (
            lambda: simulation(*QUIET, plugins=[_plugin(register_components=lambda: 1 / 0)]),
            ConfigError,
            "raised in register_components: ZeroDivisionError('division by zero')",
        ),
        (
            lambda: simulation(
                "guest.memory_mib=16",
                "host.memory_mib=64",
                "workload.boot=false",
                "workload=uniform",
                "workload.name=raising-workload",
                plugins=[_plugin(RaisingWorkload)],
            ).run(),
            PluginError,
            "workload 'raising-workload' of kvm[guest0] raised in pages: RuntimeError('no pages')",
        ),
        (
            lambda: _with_policy(BadReclaim, "workload.accesses=30000", "host.memory_mib=8").run(),
            PluginError,
            "policy 'bad-reclaim' returned 'plenty' from reclaim; expected the number of frames it freed",
        ),
        (
            lambda: _with_policy(BadMetrics).run(),
            PluginError,
            "policy 'bad-metrics' returned [1, 2] from collect_metrics; expected a dict of metrics",
        ),
    ],
    ids=[
        "region-out-of-mm",
        "region-raises",
        "config-post-init",
        "constructor",
        "register-components",
        "workload-pages",
        "reclaim-answer",
        "metrics-answer",
    ],  # fmt: skip
)
def test_every_call_into_a_plugin_is_wrapped(make, error, words):
    with pytest.raises(error) as info:
        make()
    assert type(info.value) is error and words in str(info.value), str(info.value)


# -- the command: one line, exit 2, the traceback in the log file --


@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            ("secondary=faulty", "secondary.fault=raise_in_fault_around"),
            "mmnsim: secondary MMU 'faulty[guest0]' raised in fault_around: RuntimeError('injected fault')",
        ),
        (
            ("policies=[swap,faulty_policy]", "policies.faulty_policy.fault=collapse_past_end"),
            "mmnsim: policy 'faulty_policy' called an operation with a bad argument in host_tick: collapse_huge_page: "
            "first must be in [0, 4096), got 4096",
        ),
        (
            ("policies=[swap,faulty_policy]", "policies.faulty_policy.fault=discard_negative"),
            "mmnsim: policy 'faulty_policy' called an operation with a bad argument in host_tick: discard of mm "
            "'guest0': pages must be in [0, 4096), got -1 (at index 0)",
        ),
        (
            ("policies=[swap,faulty_policy]", "policies.faulty_policy.fault=charge_nan"),
            "mmnsim: policy 'faulty_policy' called an operation with a bad argument in host_tick: charge: ns must be "
            "a finite number of nanoseconds >= 0, got nan",
        ),
        (
            ("policies=[swap,faulty_policy]", "policies.faulty_policy.fault=flip_view"),
            "mmnsim: policy 'faulty_policy' wrote to host state in host_tick through a read-only view (cannot set "
            "WRITEABLE flag to True of this array): plugins change host state only through the mm operations, which "
            "raise the notifiers",
        ),
    ],
    ids=["fault_around", "collapse_past_end", "discard_negative", "charge_nan", "flip_view"],
)
def test_a_broken_plugin_stops_the_command_with_one_line_and_its_traceback_in_the_log(workdir, overrides, line):
    out = cli(*TINY, *overrides, "hydra.run.dir=run", cwd=workdir)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [line]
    assert "Traceback" not in out.stdout + out.stderr
    assert "Traceback" in (workdir / "run" / "cli.log").read_text()


# -- stale accesses counted by engine.check_accesses --


def test_a_run_whose_stale_accesses_are_counted_by_check_accesses_reports_them(workdir):
    """Before: with the tick-end check off, the command's summary took the first violation message of a run
    whose only violations were stale accesses, and there was none (IndexError). Now each MMU's stale accesses
    are a message of their own (beside what the invalidation's postcondition, always on, reports)."""
    out = cli(*TINY, "secondary=faulty", "engine.check_invariants=false", "engine.check_accesses=true",
              "hydra.run.dir=run", cwd=workdir)  # fmt: skip
    assert out.returncode == 3, out.stderr[-2000:]
    assert "invariant violations (first: coherence: faulty[guest0]" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    messages = (workdir / "run" / "violations.txt").read_text().splitlines()
    assert any(m.startswith("coherence: faulty[guest0] accessed memory through an entry") for m in messages)


def test_stale_accesses_are_named_once_per_mmu_and_kind():
    sim = simulation(*TINY, "secondary.mode=unpinned", "engine.check_invariants=false", "engine.check_accesses=true")
    m = sim.run()
    assert m["coherence_violations"] > 0 and m["stale_reads"] + m["stale_writes"] > 0
    assert [msg.split(":")[0] for msg in sim.violation_messages] in (["coherence"], ["coherence", "isolation"],
                                                                      ["isolation", "coherence"])  # fmt: skip
    assert all("kvm[guest0] accessed memory through an entry" in msg for msg in sim.violation_messages)
