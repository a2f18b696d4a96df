"""``mmnsim-report`` over bad files and places it cannot write: a truncated or garbage summary.parquet,
timeseries.parquet or failed.json is listed as unreadable (path and reason) while the readable runs are
tabulated; ``--out DIR`` takes the results and plots elsewhere; a read-only sweep directory still gets
its table. No traceback in any case.

The runs are written directly (``output.write_results``), without simulating, to keep this fast.
"""

import errno
import json
import os
import stat

import polars as pl
import pytest

from conftest import config
from mmnsim import output
from mmnsim.report import main as report_main

METRICS = {"accesses": 1000, "major_faults": 10, "swap_outs": 5, "invariant_violations": 0}


def _run(root, i: int, mode: str, seed: int):
    d = root / str(i)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    (d / ".hydra" / "overrides.yaml").write_text(f"- secondary.mode={mode}\n- seed={seed}\n")
    rows = [{"tick": t, "sim_time_ns": 1e6 * t, "accesses": 100 * t, "major_faults": t} for t in range(5)]
    output.write_results(d, config(f"secondary.mode={mode}", f"seed={seed}"), {**METRICS, "seed": seed}, rows)
    return d


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    runs = [_run(root, i, mode, seed) for i, (mode, seed) in enumerate([("pin", 0), ("pin", 1), ("notifier", 0),
                                                                        ("notifier", 1)])]  # fmt: skip
    return root, runs


def _report(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return exit_info.value.code, out.out, out.err


def test_bad_summary_timeseries_and_failed_json_are_listed_and_the_rest_tabulated(sweep, capsys):
    root, runs = sweep
    summary = runs[0] / "summary.parquet"
    summary.write_bytes(summary.read_bytes()[: summary.stat().st_size // 2])  # truncated
    (runs[1] / "timeseries.parquet").write_bytes(b"garbage, not parquet" * 10)
    failed = _run(root, 4, "notifier", 2)
    (failed / "summary.parquet").unlink()
    (failed / "failed.json").write_text("{not json")
    code, out, err = _report(capsys, root, "--timeseries", "major_faults")
    assert code == 0, err
    assert (
        f"{summary}: " in out and f"{runs[1] / 'timeseries.parquet'}: " in out and f"{failed / 'failed.json'}: " in out
    )
    assert "3 files unreadable" in out
    assert "| notifier |" in out and "| pin |" in out  # the readable runs' table
    assert "3 runs;" in out  # runs[1]'s summary is fine: its run is in the table
    assert (root / "major_faults_over_time.png").is_file()


def test_no_readable_summary_is_one_line_exit_2(sweep, capsys):
    root, runs = sweep
    for d in runs:
        (d / "summary.parquet").write_bytes(b"PAR1 garbage")
    code, out, err = _report(capsys, root)
    assert code == 2
    assert err.startswith("mmnsim-report: no readable summary.parquet under") and "unreadable" in err


def test_out_takes_results_and_plots_elsewhere(sweep, tmp_path, capsys):
    root, _ = sweep
    out_dir = tmp_path / "elsewhere" / "new"
    code, out, err = _report(capsys, root, "--out", out_dir, "--plot", "secondary.mode", "major_faults")
    assert code == 0, err
    assert {p.name for p in out_dir.iterdir()} == {
        "results.parquet",
        "results.csv",
        "major_faults_by_secondary.mode.png",
    }
    assert not (root / "results.parquet").exists()


def test_a_read_only_sweep_gets_its_table_and_one_line_about_what_was_not_written(sweep, capsys, monkeypatch):
    root, _ = sweep
    if os.geteuid() == 0:  # root writes through permission bits: fail the writes as a read-only mount would

        def read_only(self, path, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(pl.DataFrame, "write_parquet", read_only)
        monkeypatch.setattr(pl.DataFrame, "write_csv", read_only)
        reason = os.strerror(errno.EROFS)
    else:
        reason = "Permission denied"
    mode = root.stat().st_mode
    root.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, out, err = _report(capsys, root)
    finally:
        root.chmod(mode)
    assert code == 0
    assert "| notifier |" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mmnsim-report: could not write results.parquet, results.csv in {root} ({reason})")
    assert not list(root.glob(".*.tmp")) and not (root / "results.parquet").exists()


def test_out_that_is_a_file_is_an_input_error(sweep, tmp_path, capsys):
    root, _ = sweep
    (tmp_path / "afile").write_text("x")
    code, _, err = _report(capsys, root, "--out", tmp_path / "afile")
    assert code == 2 and err.strip() == f"mmnsim-report: --out {tmp_path / 'afile'}: not a directory"


def test_failed_json_readable_still_reports_its_error(sweep, capsys):
    root, _ = sweep
    failed = _run(root, 4, "pin", 2)
    (failed / "summary.parquet").unlink()
    (failed / "failed.json").write_text(json.dumps({"error": "RuntimeError: boom"}))
    code, out, _ = _report(capsys, root)
    assert code == 0 and "RuntimeError: boom" in out and "unreadable" not in out
