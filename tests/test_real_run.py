"""``mmnsim backend=real``: the real twin run through the command, beside the simulator, and cleaned up.

A small scenario the kernel runs reliably here: a 96 MiB KVM guest (2 vCPUs, zipf) and, from tick 2 on, a
plain 64 MiB process (uniform) in a 128 MiB memory cgroup with a 256 MiB swap file, so that reclaim swaps
guest pages out and KVM is told (a guest alone under a tight limit is often OOM-killed during its boot
pass by the cgroup's OOM killer here: docs/real.md). Run as one sweep, ``-m backend=sim,real``, so that the
simulator's summary sits beside the twin's in one directory and one ``mmnsim-report`` table.

The tests that run the twin need root, /dev/kvm, the memory cgroup v1 controller and tracefs, and skip with
the reason elsewhere; the refusals run anywhere.
"""

import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import cli, config, real_host_missing, simulation
from mmnsim.cli import check_overrides, quote_numbered_options
from mmnsim.config import ConfigError
from mmnsim.host import THP
from mmnsim.metrics import catalogue
from mmnsim.real import cgroup, cleanup, counters, swapfile, tracing
from mmnsim.real.errors import HostError
from mmnsim.real.guest import PAGEMAP_PRESENT, Guest, Process
from mmnsim.real.run import release, thp_advice
from mmnsim.real.run import run as real_run
from mmnsim.report import table

WHY_NOT = real_host_missing()
needs_machine = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
_ROOT = tracing.find_tracefs()
TOP_EVENTS = (_ROOT / "set_event").read_text() if _ROOT is not None and WHY_NOT is None else None  # someone else's

SCENARIO = [
    "guest.memory_mib=96",
    "guest.vcpus=2",
    "host.memory_mib=128",
    "host.swap_mib=256",
    "workload.accesses=300000",
    "engine.accesses_per_tick=65536",
    "processes=[{name: hog, memory_mib: 64, node: 0, workload: {name: uniform, accesses: 300000, start_tick: 2}}]",
]
# No pressure at all (a 64 MiB guest in a 128 MiB group): a few seconds, for the lifecycle.
QUICK = ["guest.memory_mib=64", "guest.vcpus=1", "host.memory_mib=128", "host.swap_mib=64", "workload.accesses=100000",
         "engine.accesses_per_tick=65536"]  # fmt: skip
# Long enough to be stopped midway: 400 M accesses (minutes here), stopped by its time limit at worst.
LONG = [*QUICK, "workload.accesses=400000000", "real.time_limit_s=120"]


def leftovers(pid: int) -> list[str]:
    """What of the runs of process ``pid`` the machine still holds: cgroup, swap file (on or on disk), tracing
    instance (with its enabled events), tracefs mount, record."""

    def ours(name: str) -> bool:
        return cleanup.owner_pid(name) == pid

    left = [f"cgroup {g.name}" for g in cgroup.memory_hierarchy_v1().iterdir() if g.is_dir() and ours(g.name)]
    left += [f"swap {a.path}" for a in swapfile.active_swaps() if ours(a.path.name)]
    left += [f"swap file {p}" for p in swapfile.DEFAULT_DIRECTORY.glob("*.swap") if ours(p.name)]
    left += [f"record {p}" for p in cleanup.STATE_DIR.glob("*.json") if ours(p.stem)]
    left += [f"mount {m}" for m in tracing.tracefs_mounts() if ours(m.name)]
    root = tracing.find_tracefs()
    if root is not None and (root / "instances").is_dir():
        for inst in (root / "instances").iterdir():
            if ours(inst.name):
                on = [e for e in (inst / "set_event").read_text().split() if e]
                left.append(f"tracing instance {inst.name} ({len(on)} events enabled)")
    return left


def started(*overrides: str, cwd: Path) -> subprocess.Popen:
    """A real run in the background, in a run directory of its own beside ``cwd`` (runs started in the same
    second would otherwise share Hydra's default one, which a run holds locked; and a sweep in ``cwd`` must
    not find another run's directory in its own)."""
    exe = Path(sys.executable).with_name("mmnsim")
    run_dir = f"hydra.run.dir={cwd.parent / f'{cwd.name}-run-{next(_RUNS)}'}"
    return subprocess.Popen([str(exe), "backend=real", *overrides, run_dir], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


_RUNS = itertools.count()


def stop_at_replay(procs: list[subprocess.Popen], timeout: float = 120.0) -> None:
    """SIGSTOP each run as soon as its tracing instance exists (its resources all made, its tenants started):
    it stays alive, holding them, and idle."""
    waiting, deadline = list(procs), time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for proc in list(waiting):
            if any(s.startswith("tracing instance") for s in leftovers(proc.pid)):
                proc.send_signal(signal.SIGSTOP)
                waiting.remove(proc)
            else:
                assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    assert not waiting, "a run never reached its replay"


# --- what the machine cannot run: refused before anything runs ------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("kernel=2008", "kernel=2008"),
        ("host.numa_nodes=64", "host.numa_nodes=64"),
        ("secondary=rdma", "secondary.name=rdma"),
        ("secondary.mode=unpinned", "secondary.mode=unpinned"),
        ("guest.devices=[{secondary: {name: gpu}, workload: {name: zipf}}]", "guest.devices"),
        ("policies=[swap,numa]", "policies.numa"),
        ("policies=[swap,defrag]", "policies.defrag"),
        ("host.swap_write_error_rate=0.01", "host.swap_write_error_rate"),
        ("host.oom=fail", "host.oom=fail"),
        ("guest.count=2", "guest.count=2"),
        ("policies.swap.mode=clock", "policies.swap.mode=clock"),
        ("host.swap_device=blockdev", "host.swap_device=blockdev"),
        ("host.read_stats_each_tick=false", "host.read_stats_each_tick=false"),
        ("engine.schedule=concurrent", "engine.schedule=concurrent"),
        ("real.eager_release=madvise", "real.eager_release"),
    ],
)
def test_what_the_machine_cannot_run_is_refused_in_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        check_overrides(quote_numbered_options(["backend=real", override]))
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_a_refusal_stops_a_sweep_before_any_job_with_status_2(workdir):
    out = cli("-m", "backend=sim,real", "secondary.mode=pin,unpinned", "guest.memory_mib=32", cwd=workdir)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("mmnsim: secondary.mode=unpinned: the unsafe strawman exists in no kernel (KVM "
                                  "either pins or subscribes to notifiers); pin or notifier only")  # fmt: skip
    assert not list(workdir.rglob("*.parquet"))


def test_race_windows_and_model_costs_are_the_models_own_and_ignored():
    check_overrides(["backend=real", "engine.race_window=0.5", "costs.swap_in_ns=1", "secondary.paging=shadow"])


def test_the_simulator_refuses_a_real_config_and_explain_names_the_real_source():
    with pytest.raises(ConfigError, match="^backend=real: the simulator runs backend=sim only$"):
        simulation("backend=real")
    cat = catalogue()
    assert "real twin (backend=real): /proc/vmstat pswpout; machine-wide" in cat.explain("swap_outs")
    assert "real twin (backend=real): not observed" in cat.explain("fault_retries")
    assert "declared by: the real twin (backend=real)" in cat.explain("pages_invalidated")


def test_host_thp_becomes_the_madvise_that_gives_the_models_thp():
    assert thp_advice(THP.never, True) == "nohugepage"
    assert thp_advice(THP.madvise, True) == "hugepage" and thp_advice(THP.madvise, False) == "nohugepage"
    assert thp_advice(THP.always, False) == "hugepage"


# --- the run ----------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """The sweep's directory, and the runs around it: ``others`` started with it (each ending its own way), the
    killed one's leftovers as they were before the sweep's real job started, the live runs' as they were
    before and after it."""

    dir: Path
    others: dict[str, subprocess.Popen]
    killed_left: list[str]
    live_before: dict[str, list[str]]
    live_after: dict[str, list[str]]
    timed_started: float  # time.monotonic() when the timed run started


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    """``mmnsim -m backend=sim,real`` of the scenario: the simulator's job and the twin's, in one sweep. Around
    it, four long real runs start first, together (every start of the command costs seconds here), and are
    stopped (SIGSTOP: alive, idle) once they replay: one whose time limit passes meanwhile, one SIGKILLed
    before the sweep (whose real job must remove its leftovers), and two that the sweep must leave alone
    (ended later by Ctrl-C and SIGTERM)."""
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    where = tmp_path_factory.mktemp("sweep")
    timed_started = time.monotonic()
    others = {"timed": started(*LONG, "real.time_limit_s=10", cwd=where), "killed": started(*LONG, cwd=where),
              "ctrl-c": started(*LONG, cwd=where), "sigterm": started(*LONG, cwd=where)}  # fmt: skip
    try:
        stop_at_replay(list(others.values()))
        others["killed"].kill()
        others["killed"].communicate(timeout=60)
        killed_left = leftovers(others["killed"].pid)
        live = {name: leftovers(others[name].pid) for name in ("ctrl-c", "sigterm")}
        # Hydra's basic launcher runs the jobs in this command's process: two fewer interpreters to start than
        # joblib's workers (the twin in a joblib worker is what `mmnsim -m` does by default: docs/real.md's run).
        out = cli("-m", "backend=sim,real", *SCENARIO, f"hydra.sweep.dir={where}", "hydra/launcher=basic", cwd=where)
        assert out.returncode == 0, out.stderr[-3000:]
        after = {name: leftovers(others[name].pid) for name in live}
        yield Sweep(where, others, killed_left, live, after, timed_started)
    finally:
        for proc in others.values():  # a test that failed midway: SIGTERM cleans up, as tested
            if proc.poll() is None:
                proc.terminate()
                proc.send_signal(signal.SIGCONT)
                proc.communicate(timeout=120)


def summaries(where: Path) -> dict[str, dict]:
    """Each job's summary by backend, with its directory."""
    rows = [{**pl.read_parquet(p).row(0, named=True), "dir": p.parent} for p in where.rglob("summary.parquet")]
    return {r["backend"]: r for r in rows}


@needs_machine
def test_the_twin_reports_the_kernels_counts_for_the_simulations_own_accesses(sweep):
    runs = summaries(sweep.dir)
    real, sim = runs["real"], runs["sim"]
    # The same access lists (workload.client_streams): every access, and every write, the same.
    assert real["accesses"] == real["accesses_attempted"] == sim["accesses"] == 96 * 256 + 300_000 + 64 * 256 + 300_000
    assert real["writes"] == sim["writes"]
    assert real["kvm.accesses"] == sim["kvm.accesses"] == 96 * 256 + 300_000
    # The kernel's counts: reclaim under the limit swapped guest pages out, and KVM was told, page by page.
    assert real["swap_outs"] > 10_000 and real["major_faults"] > 1_000 and real["swap_ins"] > 1_000
    assert real["invalidations"] > 10_000 and real["pages_invalidated"] >= real["invalidations"]
    assert real["secondary_faults"] > 96 * 256 // 8  # at least one fault per 8 pages (prefetch) for the boot
    assert real["young_pages_aged"] > 0 and real["age_calls"] > 0 and real["pgscan"] >= real["pages_reclaimed"] > 0
    assert real["direct_reclaims"] > 0 and real["memcg_failcnt"] > 0 and real["oom_kills"] == 0
    assert real["memcg_max_usage_bytes"] <= 128 << 20 and real["trace_lost_events"] == 0
    # The tenants' own code's memory in the cgroup is locked (out of reclaim), and is not counted as pins.
    assert real["pinned_pages"] == 0 and 0 < real["harness_locked_bytes"] < 16 << 20
    assert real["sim_time_ns"] > 0 and real["wall_seconds"] * 1e9 > real["sim_time_ns"]
    # What the twin cannot observe is null, not zero; the machine and the memcg-limited host are recorded.
    for name in ("fault_retries", "stale_reads", "oom_events", "flush_cost_ns", "invariant_violations"):
        assert real.get(name) is None and sim[name] is not None, name
    assert real["machine.memcg_limited"] is True and real["machine.cgroup"] == "v1" and real["machine.kernel"]
    assert real["machine.kvm_module"] and real["machine.thp"].startswith("enabled ")
    assert sim.get("machine.kernel") is None  # a column of the sweep's one schema, null for the simulator
    series = pl.read_parquet(real["dir"] / "timeseries.parquet")  # one row per tick, as the model's
    assert series["tick"].to_list() == list(range(series.height)) and series["accesses"][-1] == real["accesses"]
    assert series.height == pl.read_parquet(sim["dir"] / "timeseries.parquet").height


@needs_machine
def test_the_replay_runs_natively(sweep):
    """KVM emulated no instruction of the replay but the one `out` of each chunk's exit."""
    real = summaries(sweep.dir)["real"]
    assert real["chunk_exits"] > 0 and real["emulated_instructions"] == real["chunk_exits"]


@needs_machine
def test_one_report_table_sets_the_twin_beside_the_simulator(sweep, workdir):
    metrics = "accesses,swap_outs,invalidations,secondary_faults,fault_retries"
    report = str(Path(sys.executable).with_name("mmnsim-report"))
    out = subprocess.run([report, str(sweep.dir), "--baseline", "backend=sim", "--metrics", metrics],
                         capture_output=True, text=True, cwd=workdir)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "| metric | backend=sim (1 runs) | backend=real (1 runs) |"
    runs = summaries(sweep.dir)
    swap = next(line for line in lines if line.startswith("| swap_outs |"))
    assert f"{runs['real']['swap_outs']:,}" in swap and f"{runs['sim']['swap_outs']:,}" in swap
    assert next(line for line in lines if line.startswith("| fault_retries |")).endswith("|  |")  # absent: empty
    by = table(sweep.dir, by=["backend"], metrics=["swap_outs"])  # --by backend
    assert sorted(by["backend"].to_list()) == ["real", "sim"]


@needs_machine
def test_no_resource_of_a_real_run_is_left_however_it_ends(sweep):
    """After a normal run (the sweep's), a failed run (its time limit), Ctrl-C, SIGTERM, and a SIGKILL followed
    by another run (the sweep's real job): no swap file, cgroup, tracing instance (nor its enabled events),
    mount or record of the twin is left; each stopped run says so in one line with the signal's status; the
    next run removed the killed run's leftovers and left the live runs' alone; the top-level trace buffer's
    events are as they were."""
    others = sweep.others
    assert any(s.startswith("cgroup") for s in sweep.killed_left), sweep.killed_left
    assert any(s.startswith("swap") for s in sweep.killed_left), sweep.killed_left
    assert leftovers(others["killed"].pid) == []
    assert sweep.live_after == sweep.live_before and all(sweep.live_before.values())
    assert leftovers(cleanup.owner_pid(summaries(sweep.dir)["real"]["twin.run_name"])) == []  # the sweep's job

    time.sleep(max(0.0, 10 - (time.monotonic() - sweep.timed_started)))  # its time limit passed while stopped
    others["timed"].send_signal(signal.SIGCONT)
    out, err = others["timed"].communicate(timeout=120)
    assert others["timed"].returncode == 1, err
    assert err == ("mmnsim: the run went over its time limit of 10 s; everything the run created was removed "
                   "(real.time_limit_s)\n")  # fmt: skip
    for name, sig, said in (("ctrl-c", signal.SIGINT, "stopped by SIGINT (Ctrl-C)"),
                            ("sigterm", signal.SIGTERM, "stopped by SIGTERM")):  # fmt: skip
        others[name].send_signal(sig)
        others[name].send_signal(signal.SIGCONT)
        out, err = others[name].communicate(timeout=120)
        assert others[name].returncode == 128 + sig, err
        assert err == f"mmnsim: {said}; everything the run created was removed\n", err
    for proc in others.values():
        assert leftovers(proc.pid) == [], proc.args
    if TOP_EVENTS is not None:
        assert (_ROOT / "set_event").read_text() == TOP_EVENTS


@needs_machine
def test_a_tenant_the_oom_killer_takes_between_its_own_batches_is_an_outcome_of_the_run():
    """The cgroup's OOM killer kills the tenant it picks when any of them charges a page: here the idle guest
    (oom_score_adj 1000, no swap), during the process's batch. The next request to the guest (its statistics,
    for the tick's row) finds it dead: the run goes on and counts the kill, as the model's host.oom=kill does,
    and does not fail as if the guest had crashed. (The kernel here often kills the process too, within
    milliseconds, before the guest's memory is gone: that one is found dead in its own batch.)"""
    hog = ("processes=[{name: hog, memory_mib: 40, node: 0, "
           "workload: {name: uniform, accesses: 100000, start_tick: 2}}]")  # fmt: skip
    result = real_run(config("backend=real", "guest.memory_mib=32", "guest.vcpus=1", "guest.oom_score_adj=1000",
                             "host.memory_mib=64", "host.swap_mib=0", "workload.accesses=300000",
                             "engine.accesses_per_tick=65536", hog), run_id="pytest-idle-oom")  # fmt: skip
    metrics = result.metrics
    assert metrics["oom_kills"] >= 1
    assert metrics["kvm.accesses"] == 3 * 65536  # ticks 0 to 2, then killed during the process's batch
    assert result.rows[-1]["oom_kills"] == metrics["oom_kills"]
    assert leftovers(os.getpid()) == []


def _may_lower_oom_score_adj() -> bool:
    """CAP_SYS_RESOURCE (bit 24) in this process's effective capabilities."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


@needs_machine
def test_an_oom_score_adj_the_process_may_not_set_is_one_clear_error():
    """Lowering a tenant's oom_score_adj below what it inherited needs CAP_SYS_RESOURCE (fs/proc/base.c
    __set_oom_adj), which the machines of this project's kind withhold even from root: one line saying so,
    and nothing of the run left."""
    if _may_lower_oom_score_adj():
        pytest.skip("this process has CAP_SYS_RESOURCE: it may lower oom_score_adj")
    with pytest.raises(HostError, match=r"^cannot set a tenant's oom_score_adj to -1000: .* needs CAP_SYS_RESOURCE"):
        real_run(config("backend=real", *QUICK, "guest.oom_score_adj=-1000"), run_id="pytest-oom-adj")
    assert leftovers(os.getpid()) == []


# --- the pieces the run uses ------------------------------------------------------------------------------


@needs_machine
def test_eager_release_by_mprotect_zaps_kvms_entries_and_keeps_the_pages():
    """An mprotect round trip (the default eager release) leaves guest RAM resident and the host's tables
    writable: KVM refaults every page with no host fault. MADV_DONTNEED frees the pages: host faults."""
    with Guest(16, vcpus=1) as guest:
        pages = np.arange(guest.ram_pages)
        guest.run(pages, np.ones(pages.size, bool))
        base = guest.stats()["pages_4k"] - guest.ram_pages  # the control and buffer slots' sptes
        before = counters.process_faults(guest.pid)
        release(guest, "mprotect")
        assert guest.stats()["pages_4k"] == base  # every spte of guest RAM zapped
        assert np.all(guest.pagemap() & PAGEMAP_PRESENT)  # every page still resident
        faults = guest.stats()["pf_fixed"]
        guest.run(pages, np.ones(pages.size, bool))
        assert guest.stats()["pf_fixed"] > faults  # KVM refaulted ...
        assert counters.process_faults(guest.pid).minor == before.minor  # ... the host did not
        release(guest, "dontneed")
        assert not np.any(guest.pagemap() & PAGEMAP_PRESENT)
        guest.run(pages, np.ones(pages.size, bool))
        assert counters.process_faults(guest.pid).minor >= before.minor + guest.ram_pages


@needs_machine
def test_a_plain_tenant_touches_exactly_the_pages_of_its_list():
    with Process(8) as proc:
        written, read = np.arange(3, 1000, 7), np.arange(1001, 2000, 11)
        proc.run(np.concatenate([written, read]), np.r_[np.ones(written.size, bool), np.zeros(read.size, bool)])
        present = np.flatnonzero(proc.pagemap() & PAGEMAP_PRESENT)
        assert proc.stats() == {} and proc.accesses_done == written.size + read.size
        assert set(present) == set(written) | set(read)
        assert proc.writes_done == written.size
