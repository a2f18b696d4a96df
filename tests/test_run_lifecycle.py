"""A run's results are one unit; one sweep per directory; no orphan workers; stale failures do not count;
disk errors in one line; and a sweep killed at random moments, then resumed, ends as if never killed."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import cli, config
from mmnsim import Simulation, output
from mmnsim.sweeplock import SweepLock

TINY = ("guest.memory_mib=16", "host.memory_mib=12", "workload.accesses=50000")
SWEEP = (*TINY, "hydra.sweep.dir=sweep", "hydra.launcher.n_jobs=2")


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("mmnsim:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


# 1. A run's results are one unit.


def test_up_to_date_needs_both_files_readable_and_of_this_config(tmp_path):
    cfg, other = config(*TINY, "seed=3"), config(*TINY, "seed=4")
    rows = [{"tick": 0, "accesses": 1}]
    output.write_results(tmp_path, cfg, {"accesses": 1}, rows)
    assert output.up_to_date(tmp_path, cfg) and not output.up_to_date(tmp_path, other)
    summary = (tmp_path / output.SUMMARY).read_bytes()
    # Another run's time series beside this run's summary (what an interrupted rerun used to leave).
    output.write_results(tmp_path, other, {"accesses": 1}, rows)
    (tmp_path / output.SUMMARY).write_bytes(summary)
    assert not output.up_to_date(tmp_path, cfg)
    output.write_results(tmp_path, cfg, {"accesses": 1}, rows)
    (tmp_path / output.TIMESERIES).write_bytes(b"PAR1 cut short")
    assert not output.up_to_date(tmp_path, cfg)
    (tmp_path / output.TIMESERIES).unlink()
    assert not output.up_to_date(tmp_path, cfg)
    # Without a time series in the config, the summary alone is the unit.
    quiet = config(*TINY, "seed=3", "engine.timeseries=false")
    output.write_results(tmp_path, quiet, {"accesses": 1}, [])
    assert output.up_to_date(tmp_path, quiet) and not (tmp_path / output.TIMESERIES).exists()


def test_a_rerun_in_the_same_directory_never_leaves_the_old_summary(tmp_path):
    first = cli(*TINY, "seed=1", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "run" / output.SUMMARY).is_file()
    # The same directory, another config, --reuse (else it stops: test_user_table.py), and the run stops
    # before writing results.
    second = cli("--reuse", *TINY, "secondary=faulty", "secondary.fault=raise_in_hook", "hydra.run.dir=run",
                 cwd=tmp_path)  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert "fault: raise_in_hook" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert not (tmp_path / "run" / output.SUMMARY).exists()
    assert not (tmp_path / "run" / output.TIMESERIES).exists()


# 2. One sweep per directory at a time.


def test_a_second_sweep_into_a_busy_directory_stops_and_a_stale_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mmnsim.sweeplock import SweepLock; "
         "SweepLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(tmp_path / "sweep")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        out = cli("-m", *SWEEP, "seed=0,1", cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        line = one_line_error(out)
        assert "sweep is in use by another sweep" in line and f"pid {holder.pid} " in line, line
        assert time.monotonic() - started < 60
        assert not list((tmp_path / "sweep").glob("*/.hydra"))  # no job started
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (killed, its lock file left behind): the next sweep takes the lock over.
    assert (tmp_path / "sweep" / ".mmnsim.lock").is_file()
    out = cli("-m", *SWEEP, "seed=0,1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "sweep").glob("*/summary.parquet"))) == 2
    assert not (tmp_path / "sweep" / ".mmnsim.lock").exists()  # released at the end


def test_the_lock_is_exclusive_and_released(tmp_path):
    a, b = SweepLock(tmp_path), SweepLock(tmp_path)
    a.acquire()
    with pytest.raises(Exception, match=f"in use by another sweep \\(pid {os.getpid()} "):
        b.acquire()
    a.release()
    b.acquire()
    b.release()


# 3. No orphans.


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_exit_when_the_sweep_is_killed(tmp_path):
    long = ("guest.memory_mib=16", "host.memory_mib=12", "workload.accesses=1000000000",
            "engine.accesses_per_tick=65536", "hydra.sweep.dir=sweep", "hydra.launcher.n_jobs=2")  # fmt: skip
    exe = Path(sys.executable).with_name("mmnsim")
    sweep = subprocess.Popen([str(exe), "-m", *long, "seed=0,1"], cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "sweep").glob("*/.hydra/config.yaml"))) < 2:  # both jobs running
            assert time.monotonic() < deadline and sweep.poll() is None, "the sweep did not start its jobs"
            time.sleep(0.2)
        time.sleep(1)
        workers = _children(sweep.pid)
        assert len(workers) >= 2, workers
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "workers ran on after their sweep was killed"
    finally:
        os.killpg(sweep.pid, signal.SIGKILL) if _group_alive(sweep.pid) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# 4. Stale failures.


def test_an_earlier_sweeps_failure_does_not_fail_this_sweep(tmp_path):
    first = cli("-m", *SWEEP, "secondary=faulty", "secondary.fault=none,raise_in_hook", cwd=tmp_path)
    assert first.returncode == 1 and "2 jobs: 1 ok, 1 failed (failed.json)" in first.stderr, first.stderr
    sweep = tmp_path / "sweep"
    assert (sweep / "1" / output.FAILED).is_file()
    # A stale failure beside job 0's complete results, from an earlier run of the sweep.
    (sweep / "0" / output.FAILED).write_text(json.dumps({"error": "RuntimeError: long ago"}))
    # The sweep again: job 0 is up to date (its stale failure does not count), job 1 fails again.
    again = cli("-m", *SWEEP, "secondary=faulty", "secondary.fault=none,raise_in_hook", cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    assert "sweep/0: secondary.fault=none: up to date" in again.stdout and "long ago" not in again.stderr
    assert "2 jobs: 1 up to date (not run again), 1 failed (failed.json)" in again.stderr
    assert not (sweep / "0" / output.FAILED).exists()  # its job is up to date: the failure is stale


# 6. Disk errors.


def test_an_output_path_that_is_a_file_gives_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    out = cli(*TINY, "hydra.run.dir=afile/run", cwd=tmp_path)
    assert out.returncode == 2 and "afile/run: Not a directory (ENOTDIR)" in one_line_error(out), out.stderr
    out = cli("-m", *TINY, "seed=0,1", "hydra.sweep.dir=afile", cwd=tmp_path)
    assert out.returncode == 2 and "afile: Not a directory (ENOTDIR)" in one_line_error(out), out.stderr


def test_a_read_only_output_dir_gives_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    elif subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True
    ).returncode:
        pytest.skip("root ignores permissions and cannot mount a read-only tmpfs here")
    try:
        out = cli(*TINY, "hydra.run.dir=ro/run", cwd=tmp_path)
        assert (
            out.returncode == 2
            and "ro/run: Read-only file system (EROFS)" in one_line_error(out)
            or ("ro/run: Permission denied (EACCES)" in one_line_error(out))
        ), out.stderr
        out = cli("-m", *TINY, "seed=0,1", "hydra.sweep.dir=ro/sweep", cwd=tmp_path)
        assert out.returncode == 2 and "ro/sweep" in one_line_error(out), out.stderr
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=True)
        ro.chmod(0o755)


@pytest.fixture
def full_disk(monkeypatch):
    """Writing results fails as on a full disk: polars, writing a file itself, fails with its "Invalid thrift"
    or IO error; a file opened for writing gets ENOSPC."""
    real_write = pl.DataFrame.write_parquet

    def write_parquet(self, file, *args, **kwargs):
        if isinstance(file, str | Path):
            raise pl.exceptions.ComputeError("parquet: Invalid thrift: transport error")
        return real_write(self, file, *args, **kwargs)

    def open_full(file, mode="r", *args, **kwargs):
        results = (output.SUMMARY, output.TIMESERIES, output.FAILED)  # Hydra's own: tests/test_robust_files.py
        if "w" in mode and Path(file).name.removeprefix(".").removesuffix(".tmp") in results:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    monkeypatch.setattr(output, "open", open_full, raising=False)


def test_a_full_disk_is_an_oserror_naming_the_file_and_leaves_nothing(tmp_path, full_disk):
    cfg = config(*TINY)
    with pytest.raises(OSError) as caught:
        output.write_results(tmp_path, cfg, {"accesses": 1}, [{"tick": 0}])
    assert output.disk_error(caught.value) == (
        f"cannot write {tmp_path / 'timeseries.parquet'}: No space left on device (ENOSPC)"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_run_and_a_sweep_gives_one_line(tmp_path, full_disk, monkeypatch, capsys):
    from mmnsim.cli import _app
    from mmnsim.sweeplock import SWEEP_PID

    monkeypatch.delenv(SWEEP_PID, raising=False)  # restored after: the sweep below sets it in this process
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mmnsim", *TINY, "hydra.run.dir=run"])
    with pytest.raises(SystemExit) as exited:
        _app()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Traceback" not in err and "thrift" not in err, err
    assert [line for line in err.splitlines() if line.startswith("mmnsim:")] == [
        f"mmnsim: cannot write {tmp_path / 'run' / 'timeseries.parquet'}: No space left on device (ENOSPC)"
    ]
    # A sweep (run here in this process): each job records its failure if it can, the sweep names them all.
    monkeypatch.setattr(sys, "argv", ["mmnsim", "-m", *TINY, "seed=0,1", "hydra.sweep.dir=sweep",
                                      "hydra/launcher=basic"])  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        _app()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Traceback" not in err and "thrift" not in err, err
    assert "mmnsim: 2 jobs: 2 failed (failed.json)" in err and err.count("No space left on device (ENOSPC)") >= 2, err


# The crash test: kill a sweep at random moments, resume it, and get an uninterrupted sweep's results.

CRASH = ("guest.memory_mib=16", "host.memory_mib=12", "workload.accesses=12000000", "engine.accesses_per_tick=65536")
CRASH_JOBS = [("seed=0", "secondary.mode=notifier"), ("seed=1", "secondary.mode=notifier"),
              ("seed=0", "secondary.mode=pin"), ("seed=1", "secondary.mode=pin")]  # fmt: skip


def _jobs_started(sweep: Path, since: float) -> int:
    return sum(p.stat().st_mtime >= since for p in sweep.glob("*/.hydra/config.yaml"))


def _kill_at_random(tmp_path: Path, rng: random.Random) -> None:
    exe = Path(sys.executable).with_name("mmnsim")
    args = ["-m", *CRASH, "seed=0,1", "secondary.mode=notifier,pin", "hydra.sweep.dir=sweep", "hydra.launcher.n_jobs=2"]
    since = time.time() - 0.01
    sweep = subprocess.Popen([str(exe), *args], cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # A random moment: once a random number of jobs has started (0: still starting up), a little later.
        started, deadline = rng.randint(0, 4), time.monotonic() + 120
        while _jobs_started(tmp_path / "sweep", since) < started and sweep.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.0))
        workers = sorted(_children(sweep.pid))
        victim = sweep.pid if not workers or rng.random() < 0.5 else rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        if victim != sweep.pid:  # a worker: then, a moment later, the sweep (joblib would go on with the rest)
            time.sleep(rng.uniform(0, 0.5))
            os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(timeout=30)
    finally:
        deadline = time.monotonic() + 10
        while _group_alive(sweep.pid) and time.monotonic() < deadline:  # the workers follow their sweep
            time.sleep(0.1)
        if _group_alive(sweep.pid):
            os.killpg(sweep.pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_sweep_killed_at_random_moments_and_resumed_has_an_uninterrupted_sweeps_results(tmp_path):
    for seed in (1, 13, 12):  # kills: a worker while starting, then once 2 and 3 of the 4 jobs have started
        _kill_at_random(tmp_path, random.Random(seed))
    resumed = cli("-m", *CRASH, "seed=0,1", "secondary.mode=notifier,pin", "hydra.sweep.dir=sweep",
                  "hydra.launcher.n_jobs=2", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    rows = {}
    for path in (tmp_path / "sweep").glob("*/summary.parquet"):
        row = pl.read_parquet(path).row(0, named=True)
        rows[(f"seed={row['seed']}", f"secondary.mode={row['secondary.mode']}")] = (path.parent, row)
    assert sorted(rows) == sorted(CRASH_JOBS)
    for job in CRASH_JOBS:  # each against the same job run uninterrupted, here
        outdir, row = rows[job]
        cfg = config(*CRASH, *job)
        sim = Simulation(cfg)
        metrics = sim.run(teardown=True)
        expected = output.summary_frame(cfg, metrics).row(0, named=True)
        differ = {k for k in expected if k not in ("wall_seconds", "compile_seconds") and row.get(k) != expected[k]}
        assert not differ, {k: (row.get(k), expected[k]) for k in differ}
        timeseries = pl.read_parquet(outdir / "timeseries.parquet")
        assert timeseries.drop(output.provenance(cfg)).equals(pl.DataFrame(sim.timeseries_rows())), job
