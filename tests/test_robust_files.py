"""Nothing lost, mixed or half-written, whatever the file system does (issue 29, items 1 and 2).

Output paths that are not regular files are never replaced; a full or read-only disk under any output
(a run's Hydra files, a sweep's multirun.yaml, a trace conversion, the report's --out, an experiment's
folder) is one line naming the path and the error, with no temporary or half-written file left; the
report counts a run once however its directory is reached, and reads result directories with non-ASCII
names under any locale. A full disk is a small tmpfs mounted by the test (root only; skipped elsewhere).
"""

import errno
import gzip
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import cli, config, fill
from mmnsim import output
from mmnsim.report import load
from mmnsim.report import main as report_main
from mmnsim.resultdir import RECORD
from mmnsim.tracecli import main as trace_main

TINY = ("guest.memory_mib=16", "host.memory_mib=12", "workload.accesses=50000")
METRICS = {"accesses": 1000, "major_faults": 10, "swap_outs": 5, "invariant_violations": 0}


def fake_run(root: Path, i: int, mode: str, seed: int, extra_column: bool = False) -> Path:
    """A job directory as a sweep leaves it, written directly (no simulation)."""
    d = root / str(i)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    (d / ".hydra" / "overrides.yaml").write_text(f"- secondary.mode={mode}\n- seed={seed}\n")
    rows = [{"tick": t, "sim_time_ns": 1e6 * t, "accesses": 100 * t, **({"kvm.zaps": t} if extra_column else {})}
            for t in range(5)]  # fmt: skip
    output.write_results(d, config(f"secondary.mode={mode}", f"seed={seed}"), {**METRICS, "seed": seed}, rows)
    return d


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for i, (mode, seed) in enumerate([("pin", 0), ("pin", 1), ("notifier", 0), ("notifier", 1)]):
        fake_run(root, i, mode, seed, extra_column=mode == "notifier")
    return root


def run_main(capsys, main, *args) -> tuple[int, str, str]:
    """A console script's main in this process: its exit status, stdout and stderr (never a traceback)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def one_line(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def leftovers(root: Path) -> list[Path]:
    """Temporary files anywhere under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def read_only(tmpfs, name: str) -> Path:
    if os.geteuid() == 0:
        return tmpfs(name, "ro,size=64k")
    pytest.skip("a read-only directory needs root here (chmod binds nobody else in a container running as root)")


# -- Hydra's own files --


def test_hydras_file_writes_and_error_report_are_replaced():
    import hydra._internal.core_plugins.basic_sweeper as basic_sweeper
    import hydra._internal.utils as hydra_utils
    import hydra.core.utils as hydra_core_utils

    from mmnsim import cli, hydrafix

    assert cli.hydrafix is hydrafix  # installed on import
    assert hydra_core_utils._save_config is hydrafix.save_config
    assert basic_sweeper.OmegaConf is hydrafix.AtomicSaveOmegaConf
    assert hydra_utils.run_and_report is hydrafix.run_and_report


def test_a_full_disk_under_a_runs_hydra_files_is_one_line_and_leaves_nothing(tmpfs, tmp_path):
    fs = tmpfs("full")
    fill(fs)
    out = cli(*TINY, f"hydra.run.dir={fs}/run", cwd=tmp_path)  # found full before the run
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert one_line(out.stderr, "mmnsim: ") == f"mmnsim: cannot write {fs}/run: No space left on device (ENOSPC)"
    fill(fs, free_pages=1)  # room for the check's probe, not for Hydra's config.yaml
    out = cli(*TINY, f"hydra.run.dir={fs}/run", cwd=tmp_path)
    line = one_line(out.stderr, "mmnsim: ")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert line == f"mmnsim: cannot write {fs}/run/.hydra/config.yaml: No space left on device (ENOSPC)", line
    assert not leftovers(fs) and not (fs / "run" / ".hydra" / "config.yaml").exists()


def test_a_full_disk_at_a_sweeps_multirun_yaml_is_one_line_and_leaves_nothing(tmpfs, tmp_path):
    fs = tmpfs("full")
    fill(fs, free_pages=2)  # room for the lock's record and the sweep's (.mmnsim-sweep.json), not for multirun.yaml
    out = cli("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={fs}/sweep", cwd=tmp_path)
    line = one_line(out.stderr, "mmnsim: ")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert line == f"mmnsim: cannot write {fs}/sweep/multirun.yaml: No space left on device (ENOSPC)", line
    # No multirun.yaml, no job, no lock left; the sweep's record is whole (the same sweep resumes from it).
    assert sorted(p.name for p in (fs / "sweep").iterdir()) == [RECORD]
    assert not leftovers(fs)


def test_a_full_disk_at_a_sweeps_record_is_one_line_and_leaves_nothing(tmpfs, tmp_path):
    fs = tmpfs("full")
    fill(fs, free_pages=1)  # room for the lock's record, not for the sweep's
    out = cli("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={fs}/sweep", cwd=tmp_path)
    line = one_line(out.stderr, "mmnsim: ")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert line == f"mmnsim: cannot write {fs}/sweep/{RECORD}: No space left on device (ENOSPC)", line
    assert sorted(p.name for p in (fs / "sweep").iterdir()) == []  # no record, no lock left
    assert not leftovers(fs)


def test_a_full_disk_at_the_sweeps_lock_leaves_no_lock_file(tmpfs, tmp_path):
    from mmnsim.sweeplock import SweepLock

    fs = tmpfs("full")
    fill(fs)
    with pytest.raises(OSError) as caught:
        SweepLock(fs / "sweep").acquire()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(fs / "sweep" / ".mmnsim.lock")
    assert list((fs / "sweep").iterdir()) == []


# -- trace conversion --


@pytest.fixture
def trace(tmp_path) -> Path:
    path = tmp_path / "small.csv"
    path.write_text("page,write\n" + "".join(f"{i % 50},{i % 3 == 0:d}\n" for i in range(3000)))
    return path


def test_trace_conversion_never_replaces_what_is_not_a_regular_file(trace, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.mmt"
    folder.mkdir()
    targets = {fifo: "a fifo", folder: "a directory"}
    node = tmp_path / "null-like"
    try:  # a device node like /dev/null (1, 3), made here: never the real one
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets[node] = "a character device"
    except PermissionError:
        pass
    for target, kind in targets.items():
        before = os.lstat(target)
        code, out, err = run_main(capsys, trace_main, "convert", trace, target, "--to", "mmt")
        line = one_line(err, "mmnsim-trace: ")
        assert code == 2 and line == (f"mmnsim-trace: cannot write {target}: {kind} is there, not a regular file; "
                                      "give a file name"), line  # fmt: skip
        after = os.lstat(target)
        assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    assert not leftovers(tmp_path)


def test_trace_conversion_writes_through_a_symbolic_link_and_compresses_by_name(trace, tmp_path, capsys):
    real = tmp_path / "real.mmt"
    real.write_bytes(b"old")
    link = tmp_path / "link.mmt"
    link.symlink_to(real)
    assert run_main(capsys, trace_main, "convert", trace, link)[0] == 0
    assert link.is_symlink() and real.read_bytes().startswith(b"MMNSIMT1")
    for name, magic in (("t.mmt.gz", b"\x1f\x8b"), ("t.valpin.zst", b"\x28\xb5\x2f\xfd"), ("t.csv.gz", b"\x1f\x8b")):
        assert run_main(capsys, trace_main, "convert", trace, tmp_path / name)[0] == 0
        assert (tmp_path / name).read_bytes()[: len(magic)] == magic, name
        code, out, _ = run_main(capsys, trace_main, "info", tmp_path / name)
        assert code == 0 and "records: 3000" in out, out
    assert gzip.decompress((tmp_path / "t.csv.gz").read_bytes()).startswith(b"page,write\n0,1\n")


def test_trace_conversion_onto_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(trace, tmpfs, capsys):
    full = tmpfs("full")
    fill(full)
    code, _, err = run_main(capsys, trace_main, "convert", trace, full / "t.mmt")
    assert code == 1
    assert one_line(err, "mmnsim-trace: ") == (
        f"mmnsim-trace: cannot write {full / 't.mmt'}: No space left on device (ENOSPC)"
    )
    assert sorted(p.name for p in full.iterdir()) == ["filler"]
    ro = read_only(tmpfs, "ro")
    code, _, err = run_main(capsys, trace_main, "convert", trace, ro / "t.mmt")
    assert code == 1 and "Read-only file system (EROFS)" in one_line(err, "mmnsim-trace: ")


def test_trace_inputs_past_the_limits_are_one_line(tmp_path, capsys):
    cases = {
        "big.csv": ("page\n18446744073709551616\n", "line 2: page 18446744073709551616 is past the largest page"),
        "long.csv": ("page\n" + "1" * 200_000 + "\n", "line 2: field larger than field limit"),
        "nul.csv": ("page\n1\x002\n", "line 2: "),
        "wide.lackey": (" L 1234567890abcdef01,8\n", "line 1"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        for command in (["info", tmp_path / name], ["convert", tmp_path / name, tmp_path / "out.mmt"]):
            code, _, err = run_main(capsys, trace_main, *command)
            assert code == 2 and message in one_line(err, "mmnsim-trace: "), (name, err)
    assert not (tmp_path / "out.mmt").exists() and not leftovers(tmp_path)


# -- the report --


def test_the_report_counts_each_run_once_however_its_directory_is_given(sweep, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(sweep)
    spellings = [sweep, Path(f"{sweep}/"), Path(f"{sweep}/../sweep"), link, sweep / "0", Path(os.path.relpath(sweep))]
    runs, _, _ = load(spellings)
    assert runs.height == 4 and runs["run_dir"].n_unique() == 4
    assert sorted(runs["run_dir"].to_list()) == sorted(str(sweep / str(i)) for i in range(4))


def test_the_report_reads_non_ascii_directories_under_any_locale(sweep, tmp_path):
    named = tmp_path / "résultats-ü"
    sweep.rename(named)
    exe = Path(sys.executable).with_name("mmnsim-report")
    locales = [{"LC_ALL": "C", "PYTHONUTF8": "0"}, {"LC_ALL": "POSIX"}, {"LANG": "C"}]
    loc = tmp_path / "locales"
    loc.mkdir()
    localedef = ["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(loc / "en_US.ISO-8859-1")]
    made = subprocess.run(localedef, capture_output=True, check=False) if shutil.which("localedef") else None
    if made is not None and made.returncode == 0:
        locales.append({"LOCPATH": str(loc), "LC_ALL": "en_US.ISO-8859-1"})  # latin-1: another encoding
    for env in locales:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8"))}
        (named / "results.parquet").unlink(missing_ok=True)
        out = subprocess.run([str(exe), str(named), "--plot", "secondary.mode", "accesses"], capture_output=True,
                             env={**base, **env}, timeout=300)  # fmt: skip
        assert out.returncode == 0 and b"Traceback" not in out.stderr, (env, out.stderr)
        assert b"4 runs;" in out.stdout and b"unreadable" not in out.stdout, (env, out.stdout)
        assert pl.read_parquet(named / "results.parquet").height == 4, env
        assert (named / "accesses_by_secondary.mode.png").is_file()


def test_the_report_counts_a_run_whose_overrides_file_is_corrupt_and_names_the_file(sweep, capsys):
    overrides = sweep / "0" / ".hydra" / "overrides.yaml"
    for content in ("a: [\n", "5\n", "{a: 1}\n"):
        overrides.write_text(content)
        code, out, _ = run_main(capsys, report_main, sweep)
        assert code == 0 and "4 runs;" in out
        assert f"{overrides}: " in out and "the run is counted" in out


def test_the_report_refuses_to_plot_text_and_plots_time_series_only_some_runs_have(sweep, capsys):
    code, _, err = run_main(capsys, report_main, sweep, "--plot", "seed", "secondary.mode")
    assert code == 2 and "--plot: secondary.mode is not a number" in one_line(err, "mmnsim-report: ")
    code, out, err = run_main(capsys, report_main, sweep, "--timeseries", "kvm.zaps", "--hue", "secondary.mode")
    assert code == 0, err
    assert "2 runs' time series have no kvm.zaps, left out of the plot:" in out
    assert (sweep / "kvm.zaps_over_time_hue_secondary.mode.png").is_file()
    code, _, err = run_main(capsys, report_main, sweep / "0", sweep / "1", "--timeseries", "kvm.zaps")
    assert code == 2 and "--timeseries: no column 'kvm.zaps' in the time series" in one_line(err, "mmnsim-report: ")


def test_report_output_onto_a_full_or_read_only_disk_or_a_non_file_is_one_line_and_leaves_nothing(
    sweep, tmpfs, tmp_path, capsys
):
    full = tmpfs("full")
    fill(full)
    code, out, err = run_main(capsys, report_main, sweep, "--out", full, "--plot", "secondary.mode", "accesses")
    assert code == 1 and "| notifier |" in out  # the table is printed; what could not be written, said
    line = one_line(err, f"mmnsim-report: could not write results.parquet, results.csv, the plot in {full} (")
    assert "(No space left on device)" in line, line
    assert sorted(p.name for p in full.iterdir()) == ["filler"]
    ro = read_only(tmpfs, "ro")
    code, out, err = run_main(capsys, report_main, sweep, "--out", ro)
    assert code == 0 and "Read-only file system" in one_line(err, "mmnsim-report: could not write results")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.mkfifo(elsewhere / "results.csv")
    code, out, err = run_main(capsys, report_main, sweep, "--out", elsewhere)
    assert "a fifo is there, not a regular file" in one_line(err, "mmnsim-report: could not write")
    assert stat.S_ISFIFO(os.lstat(elsewhere / "results.csv").st_mode) and not leftovers(elsewhere)


def test_report_output_to_a_closed_pipe_ends_quietly(sweep, tmp_path):
    exe = Path(sys.executable).with_name("mmnsim-report")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the report prints (head -1 that has its line)
    try:
        out = subprocess.run([str(exe), str(sweep)], stdout=write, stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(write)
    assert out.returncode == 1 and out.stderr == b"", out.stderr


# -- a single run interrupted --


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_single_run_is_one_line_and_leaves_no_results(tmp_path, signum):
    exe = Path(sys.executable).with_name("mmnsim")
    argv = [str(exe), "guest.memory_mib=16", "host.memory_mib=12", "workload.accesses=2000000000", "hydra.run.dir=run"]
    run = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "run" / ".hydra" / "overrides.yaml").exists():
            assert time.monotonic() < deadline and run.poll() is None, run.stderr.read()
            time.sleep(0.2)
        time.sleep(2)  # into the simulation
        run.send_signal(signum)
        _, err = run.communicate(timeout=600)  # a signal waits for the interpreter (a numba compile: minutes)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    name = signal.Signals(signum).name
    assert run.returncode == 128 + signum, err
    assert one_line(err.decode(), "mmnsim: ") == (
        f"mmnsim: interrupted ({name}): the run into run, which wrote no results; run the same command again"
    )
    assert not (tmp_path / "run" / "summary.parquet").exists() and not leftovers(tmp_path)
