"""An experiment holds its sweep directory's lock from clearing it to writing its table (issue 29, item 1):
two ``mmnsim-experiment NAME`` started together, one runs and the other stops at once with the lock's
message; the finished table holds only its own runs; nothing another process holds is deleted."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import fill
from mmnsim.experiment import main as experiment_main
from mmnsim.sweeplock import LOCK, SweepBusy, SweepLock

# The swap experiment cut to one tiny job: the command line's values replace the experiment's sweep.
ONE_JOB = ["guest.memory_mib=16", "host.memory_mib=12", "host.swap_mib=64", "kernel=6.x", "secondary.mode=notifier",
           "hydra.launcher.n_jobs=1"]  # fmt: skip


def test_two_experiments_of_one_name_one_runs_and_the_other_stops_with_the_locks_message(tmp_path):
    exe = str(Path(sys.executable).with_name("mmnsim-experiment"))
    lock = tmp_path / "multirun" / "experiment-swap" / LOCK
    first = subprocess.Popen([exe, "swap", "--out", "first", *ONE_JOB, "seed=0", "workload.accesses=3000000"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (
            lock.is_file() and lock.read_text().startswith("{") and json.loads(lock.read_text())["pid"] == first.pid
        ):
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.1)
        second = subprocess.run([exe, "swap", "--out", "second", *ONE_JOB, "seed=1", "workload.accesses=100000"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert first.poll() is None, "the first experiment ended before the second tried: make it longer"
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmnsim-experiment: "), lines
    assert f"experiment-swap is in use by another sweep (pid {first.pid} " in lines[0], lines[0]
    assert not list((tmp_path / "second").iterdir())  # it stopped before writing anything (its folder checked)
    assert first.returncode == 0, err
    runs = pl.read_parquet(tmp_path / "multirun" / "experiment-swap" / "results.parquet")
    assert runs.height == 1 and runs["seed"].to_list() == [0] and runs["workload.accesses"].to_list() == [3000000]
    assert (tmp_path / "first" / "table.md").is_file()
    assert not lock.exists()  # released at the end


def test_a_lock_handed_to_a_child_is_adopted_and_stays_the_holders(tmp_path):
    lock = SweepLock(tmp_path)
    lock.acquire()
    try:
        (tmp_path / "old-run").mkdir()
        (tmp_path / "old-file").write_text("x")
        lock.clear()
        assert [p.name for p in tmp_path.iterdir()] == [LOCK]
        child = ("import sys; from mmnsim.sweeplock import SweepLock; lock = SweepLock(sys.argv[1]); lock.acquire(); "
                 "lock.release(); sys.exit(0 if lock.inherited else 3)")  # fmt: skip
        alone = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True)
        assert alone.returncode == 1 and "SweepBusy" in alone.stderr  # not handed the lock: refused
        assert lock.run_sweep([sys.executable, "-c", child, str(tmp_path)]) == 0  # handed it: adopted
        assert (tmp_path / LOCK).is_file()  # the child's release leaves the holder's lock
        with pytest.raises(SweepBusy, match=f"pid {os.getpid()} "):
            SweepLock(tmp_path).acquire()
    finally:
        lock.release()
    SweepLock(tmp_path).acquire()  # free again


def _experiment(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        experiment_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exited.value.code, err


def test_experiment_input_errors_stop_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _experiment(capsys, "swap", "--report-only")
    assert code == 2 and err.strip() == (
        "mmnsim-experiment: nothing to report: no runs in multirun/experiment-swap (run the experiment without "
        "--report-only first)"
    )
    code, err = _experiment(capsys, "swap", "--sensitivity", "--report-only")
    assert code == 2 and err.startswith("mmnsim-experiment: nothing to report")
    code, err = _experiment(capsys, "defrag", "--sensitivity", "host.memroy_mib=3")
    assert code == 2 and err.startswith("mmnsim-experiment: defrag: host.memroy_mib: unknown key"), err
    code, err = _experiment(capsys, "swap", "hydra.launcher.n_jobs=0")
    assert code == 2 and "hydra.launcher.n_jobs=0" in err
    (tmp_path / "afile").write_text("")
    code, err = _experiment(capsys, "swap", "--out", "afile/table", "kernel=2008", "seed=0")
    assert code == 2 and err.strip() == "mmnsim-experiment: cannot write afile/table: Not a directory (ENOTDIR)", err
    assert not (tmp_path / "multirun").exists()  # nothing ran, nothing was created


def test_an_experiment_whose_folder_is_full_or_read_only_stops_before_its_sweep(tmp_path, tmpfs, monkeypatch,
                                                                                  capsys):  # fmt: skip
    from mmnsim import sweeplock

    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(sweeplock.SweepLock, "run_sweep", lambda self, command, env=None: ran.append(command))
    full = tmpfs("full")
    fill(full)
    read_only = tmpfs("ro", "ro,size=64k")
    for where, reason in ((full, "No space left on device (ENOSPC)"), (read_only, "Read-only file system (EROFS)")):
        code, err = _experiment(capsys, "swap", "--out", where / "swap", "seed=0")
        assert code == 2 and err.strip() == f"mmnsim-experiment: cannot write {where / 'swap'}: {reason}", err
    assert not ran
