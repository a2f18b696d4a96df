"""The metrics registry: every metric declared once, the columns typed by it, docs/metrics.md generated from
it, undeclared metrics refused with the plugin named; and metrics that say what they seem to."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run
from mmnsim import Metric, hookimpl
from mmnsim import counters as C
from mmnsim.metrics import FRAMEWORK, MetricError, installed_catalogue, markdown

ROOT = Path(__file__).resolve().parent.parent


def test_every_counter_is_declared_once():
    names = [m.name for m in FRAMEWORK]
    assert len(names) == len(set(names)), "a framework metric is declared twice"
    missing = [n for n in C.NAMES if n != "write_seq" and n not in names]
    assert not missing, f"counters without a declaration in framework/metrics.py: {missing}"


def test_docs_metrics_md_is_generated_from_the_registry():
    expected = markdown(installed_catalogue(builtin_only=True))
    assert (ROOT / "docs" / "metrics.md").read_text() == expected, (
        "docs/metrics.md is stale: run `mmnsim-report --metrics-doc > docs/metrics.md`"
    )


def test_a_run_reports_only_declared_metrics_with_their_declared_types():
    sim, m = run("secondary.mode=notifier", "workload.accesses=100000")
    cat = sim.catalogue
    for name, value in m.items():
        metric = cat.get(name)
        assert metric is not None, f"{name} is not declared"
        assert type(value) is metric.type, f"{name}: {type(value).__name__}, declared {metric.type.__name__}"
    assert isinstance(m["tlb_flushes"], int) and isinstance(m["pages_zapped"], int) and m["pages_zapped"] > 0
    assert isinstance(m["kvm.tlb_flushes"], int) and isinstance(m["sim_time_ns"], float)
    undeclared = [c for c in sim.timeseries_rows()[0] if cat.get(c) is None]
    assert not undeclared, f"time-series columns without a declaration: {undeclared}"


class _Reporter:
    """A plugin (registered as an object) that reports what it is given."""

    def __init__(self, metrics: dict, declared: tuple = ()):
        self.values = metrics
        self.declared_metrics = declared

    @hookimpl
    def collect_metrics(self, sim):
        return self.values


def test_an_undeclared_metric_is_an_error_naming_the_plugin_and_where_to_declare():
    with pytest.raises(MetricError) as err:
        run("workload.accesses=20000", plugins=[_Reporter({"bogus_pages": 3})])
    message = str(err.value)
    assert "test_metrics._Reporter" in message and "'bogus_pages'" in message
    assert "add Metric(NAME, UNIT, int or float" in message and "_Reporter.declared_metrics in" in message
    assert "test_metrics.py" in message


def test_an_undeclared_framework_metric_says_where_to_declare_it(monkeypatch):
    sim, _ = run("workload.accesses=20000")
    real = C.as_dict
    monkeypatch.setattr(C, "as_dict", lambda ctr: {**real(ctr), "new_counter": 1})
    with pytest.raises(MetricError) as err:
        sim.metrics()
    assert (
        "the framework reports the metric 'new_counter', which is not declared: declare it in "
        "framework/metrics.py, in COUNTERS if it is a counter of mmnsim.counters, else in OTHERS" in str(err.value)
    )


def test_a_declared_plugin_metric_is_reported_with_its_type_and_a_count_must_be_whole():
    declared = (Metric("bogus_pages", "pages", int, "pages a test made up"),)
    _, m = run("workload.accesses=20000", plugins=[_Reporter({"bogus_pages": 3.0}, declared)])
    assert m["bogus_pages"] == 3 and isinstance(m["bogus_pages"], int)
    with pytest.raises(MetricError, match="reports bogus_pages=2.5, but bogus_pages is declared a count"):
        run("workload.accesses=20000", plugins=[_Reporter({"bogus_pages": 2.5}, declared)])


def test_a_plugin_may_not_redeclare_a_framework_metric():
    declared = (Metric("tlb_flushes", "flushes", int, "mine"),)
    with pytest.raises(MetricError, match="declares 'tlb_flushes', a framework metric"):
        run("workload.accesses=20000", plugins=[_Reporter({}, declared)])


def test_oom_events_count_failing_allocations_and_oom_ticks_the_ticks():
    """A pinned guest larger than RAM: every allocation after the host runs out is an OOM event; the old
    count (ticks with an OOM) saturated at the tick count."""
    sim, m = run("secondary.mode=pin", "workload.accesses=200000", "host.oom=fail")
    assert m["alloc_failures"] > 10 * m["ticks"]
    assert m["oom_events"] == m["alloc_failures"]  # no device memory here: every failure is an OOM
    assert 0 < m["oom_ticks"] <= m["ticks"]
    assert m["accesses_failed"] == m["alloc_failures"] > 0
    assert m["accesses_attempted"] == m["accesses"] + m["accesses_failed"]
    assert m["kvm.accesses_attempted"] == m["kvm.accesses"] + m["kvm.accesses_failed"]
    assert m["translation_ns_per_access"] == pytest.approx(m["translation_ns"] / m["accesses"])


def test_an_oom_kill_is_one_oom_event_and_the_victim_attempts_no_more():
    """With the OOM killer, the out_of_memory() that kills counts once; the killed guest issues nothing more,
    so its run is visibly short (accesses far below the workload's, oom_kills 1), not failed."""
    _, m = run("secondary.mode=pin", "workload.accesses=200000")
    assert m["oom_kills"] == 1 and m["oom_events"] == 1 and m["oom_ticks"] == 1
    assert m["accesses_failed"] == 0 and m["accesses_attempted"] == m["accesses"] < 200000
    assert m["oom_victims"].startswith("guest0 ")


def test_accesses_failed_is_zero_when_every_access_completes():
    _, m = run("secondary.mode=notifier", "workload.accesses=100000")
    assert m["accesses_failed"] == 0 and m["oom_events"] == m["oom_ticks"] == 0
    assert m["accesses_attempted"] == m["accesses"] == 100000 + 64 * 256  # the workload and the boot pass


def tool(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mmnsim-report")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_explain_prints_one_entry_with_unit_and_kernel_counter():
    out = tool("--explain", "kvm.swap_outz")
    assert out.returncode == 2 and "no metric 'kvm.swap_outz' is declared; closest: swap_outs" in out.stderr
    out = tool("--explain", "kvm.major_faults")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("major_faults: primary faults that read the page from swap")
    assert "unit: faults; int" in out.stdout and "kernel counter: pgmajfault" in out.stdout


def test_the_time_model_adds_up_as_docs_time_md_says():
    """One guest, one node: sim_time_ns is (memory access + translation + faults) / vCPUs + flush IPIs (+ direct
    reclaim charged to the guest, none here), and guest_stall_ns the same without the first two."""
    sim, m = run("secondary.mode=notifier", "workload.accesses=300000")
    c, kvm, vcpus = sim.costs, sim.secondaries[0].cfg, sim.clients[0].vcpus
    assert m["direct_reclaims"] == 0 and m["tlb_flushes"] > 0 and m["major_faults"] > 0
    faults = (m["minor_faults"] * c.minor_fault_ns + m["major_faults"] * c.swap_in_ns
              + (m["secondary_faults"] + m["fault_retries"]) * kvm.fault_ns)  # fmt: skip
    # each vCPU in guest mode loses flush_ipi_ns to a kick (tests/test_flush_ipis.py); the count is whole, the
    # time charged is not: within one kick
    ipis = m["tlb_flush_ipis"] * kvm.flush_ipi_ns / vcpus
    assert 0 < m["tlb_flush_ipis"] < vcpus * m["tlb_flushes"]
    own = c.access_ns * m["accesses"] + m["translation_ns"]
    assert m["sim_time_ns"] == pytest.approx((own + faults) / vcpus + ipis, abs=kvm.flush_ipi_ns)
    assert m["guest_stall_ns"] == pytest.approx(faults / vcpus + ipis, abs=kvm.flush_ipi_ns)
    assert m["stall_fraction"] == pytest.approx(m["guest_stall_ns"] / m["sim_time_ns"])
    assert m["effective_access_ns"] == c.access_ns
    assert m["sim_time_ns_per_access"] == pytest.approx(m["sim_time_ns"] / m["accesses"])
