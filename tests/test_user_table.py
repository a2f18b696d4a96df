"""The user's table: a sweep directory holds one sweep (and a run directory one run), one schema for every
run so a glob reads a sweep, time in the report's table, a sweep you can watch, Ctrl-C in one line, the
first compile said, and messages that point the right way."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from numba import njit

from conftest import cli, config
from mmnsim import output
from mmnsim.cli import check_overrides
from mmnsim.config import ConfigError
from mmnsim.progress import COMPILING, CompileNotice, ProgressBar
from mmnsim.report import _decimals, hidden_differences, markdown, summarize
from mmnsim.report import main as report_main

TINY = ("guest.memory_mib=16", "host.memory_mib=12", "host.swap_mib=64", "workload.accesses=20000",
        "engine.accesses_per_tick=8192")  # fmt: skip
EXE = Path(sys.executable).with_name("mmnsim")


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("mmnsim:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def summaries(sweep: Path) -> dict[str, int]:
    """Job directory name -> the summary's modification time."""
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/summary.parquet")}


# 1. A sweep directory belongs to one sweep; a run directory to one run.


def test_another_sweep_stops_before_any_job_the_same_sweep_reruns_nothing_and_reuse_replaces(tmp_path):
    sweep = tmp_path / "sweep"
    first = cli("-m", *TINY, "seed=0,1,2", "hydra.sweep.dir=sweep", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # A sweep you can watch: its own first line, not Hydra's banner; a line per job with what tells it
    # apart, in job order; one closing line.
    lines = first.stdout.splitlines()
    assert lines[0].startswith("sweep: 3 jobs into sweep (seed=0,1,2), 2 at a time"), lines[0]
    assert "[HYDRA]" not in first.stdout + first.stderr and "Launching jobs" not in first.stdout
    assert [line.split(": ")[:2] for line in lines[1:4]] == [["sweep/0", "seed=0"], ["sweep/1", "seed=1"],
                                                             ["sweep/2", "seed=2"]]  # fmt: skip
    assert all(": done in " in line for line in lines[1:4]), lines
    assert lines[-1] == "3 jobs: 3 ok; the table: mmnsim-report sweep"
    before = summaries(sweep)
    hydra_files = {p: p.stat().st_mtime_ns for p in sweep.glob("*/.hydra/*")}

    # Another sweep (a smaller one) into that directory: one line, before any job, nothing touched.
    other = cli("-m", *TINY, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert other.returncode == 2, other.stderr
    line = one_line_error(other)
    assert line.startswith("mmnsim: sweep holds another sweep's results (3 jobs: ") and "seed=0,1,2;" in line, line
    assert "this sweep: 2 jobs: " in line and "use another hydra.sweep.dir" in line and "add --reuse" in line
    assert summaries(sweep) == before and {p: p.stat().st_mtime_ns for p in sweep.glob("*/.hydra/*")} == hydra_files
    assert sorted(pl.read_parquet(sweep / "*" / "summary.parquet")["seed"]) == [0, 1, 2]

    # The same sweep again: it resumes, and every job is up to date.
    again = cli("-m", *TINY, "seed=0,1,2", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("up to date (same config and code), not run again") == 3, again.stdout
    assert "resuming" in again.stdout.splitlines()[0]
    assert again.stdout.splitlines()[-1] == "3 jobs: 3 up to date (not run again); the table: mmnsim-report sweep"
    assert summaries(sweep) == before

    # --reuse: the smaller sweep removes the bigger one's results first; none of its jobs is left over.
    reused = cli("-m", "--reuse", *TINY, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert reused.returncode == 0, reused.stderr
    assert sorted(summaries(sweep)) == ["0", "1"] and not (sweep / "2").exists()
    assert sorted(pl.read_parquet(sweep / "*" / "summary.parquet")["seed"]) == [0, 1]


def test_results_without_a_sweep_record_are_not_taken_for_this_sweeps(tmp_path):
    old = tmp_path / "sweep" / "0"
    (old / ".hydra").mkdir(parents=True)
    (old / ".hydra" / "config.yaml").write_text("seed: 0\n")
    out = cli("-m", *TINY, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert out.returncode == 2 and "holds results that are not this sweep's (1 job directories" in one_line_error(out)


def test_a_run_into_another_runs_directory_stops_and_the_same_run_replaces_its_own(tmp_path):
    first = cli(*TINY, "seed=1", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    same = cli(*TINY, "seed=1", "hydra.run.dir=run", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    other = cli(*TINY, "seed=2", "hydra.run.dir=run", cwd=tmp_path)
    assert other.returncode == 2, other.stderr
    line = one_line_error(other)
    assert line.startswith("mmnsim: run holds another run's results (") and "seed=1" in line and "--reuse" in line
    assert pl.read_parquet(tmp_path / "run" / "summary.parquet")["seed"][0] == 1
    reused = cli("--reuse", *TINY, "seed=2", "hydra.run.dir=run", cwd=tmp_path)
    assert reused.returncode == 0, reused.stderr
    assert pl.read_parquet(tmp_path / "run" / "summary.parquet")["seed"][0] == 2


def test_a_run_left_writing_in_the_background_is_detected(tmp_path):
    background = subprocess.Popen([str(EXE), "guest.memory_mib=64", "host.memory_mib=48",
                                   "workload.accesses=500000000", "hydra.run.dir=sweep/0"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "sweep" / "0" / ".mmnsim.lock").exists():
            assert background.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        out = cli("-m", *TINY, "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert f"sweep/0 is in use by another run (pid {background.pid} " in one_line_error(out)
        out = cli(*TINY, "hydra.run.dir=sweep/0", cwd=tmp_path)
        assert out.returncode == 2 and "in use by another run" in one_line_error(out)
    finally:
        background.kill()
        background.wait()
    # And a run into a directory inside a live sweep's.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mmnsim.sweeplock import SweepLock; "
         "SweepLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(tmp_path / "big")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = cli(*TINY, "hydra.run.dir=big/7", cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert f"is inside {tmp_path / 'big'}, in use by another sweep (pid {holder.pid} " in one_line_error(out)
    finally:
        holder.kill()
        holder.wait()


def _fake_run(run_dir: Path, *overrides: str, accesses: int = 100) -> None:
    """A run's directory as a job leaves it, without simulating: its summary and Hydra's files."""
    cfg = config(*TINY, *overrides)
    output.write_results(run_dir, cfg, {"accesses": accesses, "sim_time_ns": 1.0e6}, [])
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([o for o in overrides if o.startswith("seed")]))


def test_the_report_splits_a_group_whose_runs_differ_in_settings_or_code(tmp_path, capsys, monkeypatch):
    # Two sweeps over seeds, one at host.memory_mib=12 and one at 16, neither naming it in its overrides.
    for memory, root in ((12, "a"), (16, "b")):
        for seed in (0, 1):
            _fake_run(tmp_path / root / str(seed), f"seed={seed}", f"host.memory_mib={memory}", accesses=memory)
    report_main([str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "accesses"])
    text = capsys.readouterr().out
    assert text.startswith("| host.memory_mib | runs | accesses |\n"), text
    assert "| 12 | 2 | 12 |" in text and "| 16 | 2 | 16 |" in text
    assert "split by host.memory_mib too: runs of one group differed in them" in text
    runs = pl.read_parquet(tmp_path / "a" / "results.parquet")
    assert hidden_differences(runs, ["host.memory_mib"]) == []
    # Runs of other code (the same settings) are not averaged together either.
    monkeypatch.setattr(output, "code_hash", lambda cfg: "newer code")
    _fake_run(tmp_path / "c" / "0", "seed=0", "host.memory_mib=12", accesses=99)
    report_main([str(tmp_path / "a"), str(tmp_path / "c"), "--metrics", "accesses"])
    text = capsys.readouterr().out
    assert "| code_hash | runs | accesses |" in text and "| newer code | 1 | 99 |" in text, text


# 2. One schema for all runs.


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A sweep of mixed configurations: KVM and RDMA, with swap and without (eager release instead)."""
    root = tmp_path_factory.mktemp("mixed")
    out = cli("-m", *TINY, "secondary=kvm,rdma", "policies=[swap],[eager_release]", "hydra.sweep.dir=sweep",
              "hydra.launcher.n_jobs=2", "engine.allow_violations=true", cwd=root)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return root / "sweep"


def test_a_mixed_sweep_reads_with_plain_polars_on_a_glob(mixed):
    runs = pl.read_parquet(mixed / "*" / "summary.parquet")
    assert runs.height == 4 and set(runs["secondary.name"]) == {"kvm", "rdma"}
    assert pl.scan_parquet(mixed / "*" / "summary.parquet").collect().height == 4
    assert pl.read_parquet(mixed / "*" / "timeseries.parquet")["accesses"].min() >= 0
    kvm = runs.filter(pl.col("secondary.name") == "kvm")
    rdma = runs.filter(pl.col("secondary.name") == "rdma")
    # Every metric the configuration declares, 0 where nothing happened, of the declared type; another
    # configuration's metric is null.
    assert runs.schema["kvm.change_pte_applied"] == pl.Int64 and kvm["kvm.change_pte_applied"].to_list() == [0, 0]
    assert kvm["young_pages_aged"].null_count() == 0 and rdma["kvm.tlb_flushes"].null_count() == 2
    assert runs.schema["registration_failures"] == pl.Int64 and rdma["registration_failures"].to_list() == [0, 0]
    eager = runs.filter(pl.col("policies.eager_release.every_ticks").is_not_null())
    assert eager.height == 2 and eager["eager_releases"].null_count() == 0
    assert runs["eager_releases"].null_count() == 2 and runs["policies.swap.mode"].null_count() == 2
    assert runs["compile_seconds"].dtype == pl.Float64


def test_one_configuration_declares_its_metrics_whatever_happened():
    sparse = output.summary_frame(config(*TINY), {"accesses": 1})
    assert sparse["young_pages_aged"].to_list() == [0] and sparse["kvm.pages_zapped"].to_list() == [0]
    assert sparse["oom_victims"].to_list() == [""] and sparse["stall_fraction"].dtype == pl.Float64
    assert "tick" not in sparse.columns and "huge_mapped_fraction" not in sparse.columns
    assert "kvm.huge_mapped_fraction" in sparse.columns and "rdma.accesses" not in sparse.columns


def test_unify_schemas_gives_a_glob_one_schema(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    pl.DataFrame({"workload.exponent": [1], "kvm.tlb_flushes": [3]}).write_parquet(tmp_path / "0" / "s.pq")
    pl.DataFrame({"workload.exponent": [1.5], "rdma.tlb_flushes": [4]}).write_parquet(tmp_path / "1" / "s.pq")
    with pytest.raises(pl.exceptions.PolarsError):
        pl.read_parquet(tmp_path / "*" / "s.pq")
    assert output.unify_schemas(sorted(tmp_path.glob("*/s.pq"))) == 2
    both = pl.read_parquet(tmp_path / "*" / "s.pq")
    assert both.schema["workload.exponent"] == pl.Float64 and both["workload.exponent"].to_list() == [1.0, 1.5]
    assert both["kvm.tlb_flushes"].to_list() == [3, None] and both["rdma.tlb_flushes"].to_list() == [None, 4]
    assert output.unify_schemas(sorted(tmp_path.glob("*/s.pq"))) == 0  # already one schema


# 3. Time where a reader looks.


def test_the_default_table_has_the_time_explained_and_one_format_per_column(mixed):
    out = subprocess.run([str(EXE.with_name("mmnsim-report")), str(mixed)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    head = out.stdout.splitlines()[0]
    assert "| sim_time_ns | sim_time_ns_per_access |" in head, head
    note = (
        "sim_time_ns_per_access: sim_time_ns per completed access, every CPU's accesses counted: a guest's 4 "
        "vCPUs complete about 4 accesses in that time, so one vCPU's access takes about 4 times as long"
    )
    assert note in out.stdout, out.stdout
    table = pl.DataFrame({"key": ["a", "b", "c"], "runs": [2, 2, 2], "m": [0.5, 12.25, 80000.0], "n": [1.0, 2.0, 3.0],
                          "m_sd": [0.01, 0.0, 3.0], "n_sd": [0.0, 0.0, 0.0]})  # fmt: skip
    text = markdown(table, ["m", "n"])
    assert "| a | 2 | 0.500 ± 0.010 | 1 |" in text and "| c | 2 | 80,000.000 ± 3.000 | 3 |" in text, text
    assert _decimals([49.2, 1808.4]) == 1 and _decimals([3, 5]) == 0


def test_summarize_on_a_mixed_sweep_averages_and_the_hue_needs_a_plot(mixed, capsys):
    runs = pl.read_parquet(mixed / "*" / "summary.parquet")
    assert summarize(runs, ["secondary.name"], ["sim_time_ns_per_access"]).height == 2
    with pytest.raises(SystemExit) as exited:
        report_main([str(mixed), "--hue", "secondary.mode"])
    assert exited.value.code == 2
    assert "--hue secondary.mode: colours the lines of --plot or --timeseries, and does nothing without one" in (
        capsys.readouterr().err
    )


# 4. A sweep you can watch, and Ctrl-C.


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_drawn_only_on_a_terminal():
    pipe, terminal = io.StringIO(), _Terminal()
    for stream in (pipe, terminal):
        bar = ProgressBar(stream)
        for fraction in (0.1, 0.5, 1.0):
            bar(fraction)
        bar.write("a line")
        bar.close()
    assert pipe.getvalue() == "a line\n"
    assert "%" in terminal.getvalue() and "left" in terminal.getvalue() and "a line" in terminal.getvalue()


def _interrupt_when(process: subprocess.Popen, ready, sigterm: bool = False) -> tuple[str, str]:
    deadline = time.monotonic() + 600  # the first run compiles the kernels: minutes on a busy machine
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    time.sleep(1.5)
    if sigterm:
        process.terminate()  # as kill(1), a service manager or a batch system does: the sweep's process only
    else:
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does: the whole foreground process group
    return process.communicate(timeout=120)


def test_ctrl_c_is_one_line_in_a_run_and_in_a_sweep_and_the_sweep_resumes(tmp_path):
    run = subprocess.Popen([str(EXE), "guest.memory_mib=64", "host.memory_mib=48", "workload.accesses=500000000",
                            "hydra.run.dir=run"], cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = _interrupt_when(run, lambda: (tmp_path / "run" / ".mmnsim.lock").exists())
    assert run.returncode == 130 and "Traceback" not in out + err, err
    assert err.splitlines() == ["mmnsim: interrupted (SIGINT): the run into run, which wrote no results; run the same "
                                "command again"], err  # fmt: skip
    args = ["-m", "guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "engine.accesses_per_tick=16384",
            "workload.accesses=2000000,200000000", "hydra.sweep.dir=sweep", "hydra.launcher.n_jobs=2"]  # fmt: skip
    sweep = subprocess.Popen([str(EXE), *args], cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = _interrupt_when(sweep, lambda: (tmp_path / "sweep" / "0" / "summary.parquet").exists())
    assert sweep.returncode == 130 and "Traceback" not in out + err, err
    assert err.splitlines() == ["mmnsim: interrupted (SIGINT): the sweep into sweep, 1 of 2 jobs finished; run the "
                                "same command again to resume (the finished jobs are not run again)"], err  # fmt: skip
    resumed = cli(*args, cwd=tmp_path)  # the same command resumes: job 0 is up to date, job 1 runs
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("up to date (same config and code), not run again") == 1, resumed.stdout
    assert len(list((tmp_path / "sweep").glob("*/summary.parquet"))) == 2


def test_sigterm_to_a_sweep_is_its_one_line_and_leaves_the_directory_free(tmp_path):
    args = ["-m", "guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "engine.accesses_per_tick=16384",
            "workload.accesses=2000000,400000000", "hydra.sweep.dir=sweep", "hydra.launcher.n_jobs=2"]  # fmt: skip
    sweep = subprocess.Popen([str(EXE), *args], cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = _interrupt_when(sweep, lambda: (tmp_path / "sweep" / "0" / "summary.parquet").exists(), sigterm=True)
    assert sweep.returncode == 128 + signal.SIGTERM and "Traceback" not in out + err, err
    assert err.splitlines() == ["mmnsim: interrupted (SIGTERM): the sweep into sweep, 1 of 2 jobs finished; run the "
                                "same command again to resume (the finished jobs are not run again)"], err  # fmt: skip
    assert not (tmp_path / "sweep" / ".mmnsim.lock").exists()  # released on the way out (atexit ran)
    assert (tmp_path / "sweep" / "0" / "summary.parquet").is_file()  # the finished job's results kept


# 5. The first compile says so, and the speed leaves it out.


def test_numba_compiling_is_said_once_and_timed():
    said: list[str] = []

    @njit(cache=False)
    def add(x):
        return x + 1

    with CompileNotice(said.append) as notice:
        add(1)
        add(2)  # compiled already
        add(1.5)  # another signature: compiled again, said once
    assert said == [COMPILING] and notice.seconds > 0
    with CompileNotice(said.append) as later:
        add(3)
    assert said == [COMPILING] and later.seconds == 0


def test_the_speed_figure_leaves_the_compile_out():
    metrics = output.summary_frame(config(*TINY), {"accesses": 2_000_000}).row(0, named=True)
    metrics.update(wall_seconds=10.0, compile_seconds=8.0, ticks=3, sim_time_ns=1e9)
    first = output.summary_text(metrics).splitlines()[0]
    assert "wall 10.00 s, 8.0 s of it compiling (1.0 M accesses/s)" in first, first


# 7. Messages that point the right way.


def test_a_key_of_a_policy_not_selected_says_to_add_it_to_the_list():
    with pytest.raises(ConfigError) as info:
        check_overrides(["policies.eager_release.every_ticks=4", "policies=[swap]"])
    assert str(info.value) == ("policies.eager_release.every_ticks=4: eager_release is not in policies "
                               "(policies=[swap]); add it to the list: 'policies=[swap,eager_release]'")  # fmt: skip
    with pytest.raises(ConfigError) as info:  # the default list
        check_overrides(["policies.numa.scan_delay_ms=10"])
    assert "add it to the list: 'policies=[swap,numa]'" in str(info.value)
    with pytest.raises(ConfigError) as info:  # a key that is no policy: as before
        check_overrides(["policies.nosuch=1"])
    assert "policies.nosuch: unknown key; accepted keys under policies: swap" in str(info.value)


def test_trace_messages_name_the_key_are_printed_once_and_keep_pages_whole(tmp_path):
    odd = tmp_path / "trace.xyz"
    odd.write_bytes(b"\0" * 8)
    with pytest.raises(ConfigError) as info:
        check_overrides(["workload=trace", f"workload.path={odd}"])
    assert "give it as workload.format= one of mmt, valpin" in str(info.value)
    info_cmd = subprocess.run([str(EXE.with_name("mmnsim-trace")), "info", str(odd)], capture_output=True, text=True)
    assert "give it as --format one of" in info_cmd.stderr
    big = tmp_path / "big.valpin"
    np.array([2**64 - 1], dtype="<u8").tofile(big)
    out = cli(*TINY, "workload=trace", f"workload.path={big}", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    line = one_line_error(out)
    assert "trace page 18446744073709551615 maps to page 18446744073709551615, outside" in line, line
    assert (out.stdout + out.stderr).count("maps to page") == 1
    assert "maps to page" in (tmp_path / "run" / "cli.log").read_text()  # and the run's log has it
