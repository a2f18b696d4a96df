"""A multirun survives a failing job, and a sweep started again redoes only what is missing or changed."""

import json

import polars as pl

from conftest import cli
from mmnsim.report import main as report_main

TINY = ("guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "workload.accesses=100000",
        "engine.accesses_per_tick=16384", "hydra.sweep.dir=sweep", "hydra.launcher.n_jobs=2")  # fmt: skip


def test_a_failing_job_leaves_the_others_readable_and_a_rerun_skips_what_is_up_to_date(tmp_path, capsys):
    out = cli("-m", "secondary=faulty", "secondary.fault=none,raise_in_hook,young_all", *TINY, cwd=tmp_path)
    sweep = tmp_path / "sweep"
    assert out.returncode == 1, out.stderr
    assert "mmnsim: 3 jobs: 1 ok, 1 with invariant violations (violations.txt), 1 failed (failed.json); the table: " \
           "mmnsim-report sweep" in out.stderr  # fmt: skip
    assert "sweep/1: secondary.fault=raise_in_hook: failed: PluginError: secondary MMU 'faulty[guest0]' raised in " \
           "invalidate_range_start" in out.stderr  # fmt: skip
    assert (sweep / "0" / "summary.parquet").is_file() and (sweep / "2" / "summary.parquet").is_file()
    assert not (sweep / "1" / "summary.parquet").exists()
    failure = json.loads((sweep / "1" / "failed.json").read_text())
    assert failure["error"].startswith("PluginError") and "raise RuntimeError" in failure["traceback"]
    assert failure["code_hash"] and failure["config_hash"]

    report_main([str(sweep)])
    printed = capsys.readouterr().out
    assert "| none |" in printed and "| young_all |" in printed  # the two good runs, aggregated
    assert "1 runs failed or did not finish" in printed and "(secondary.fault=raise_in_hook): PluginError" in printed
    assert pl.read_parquet(sweep / "results.parquet").height == 2

    # Started again: job 0 and 2 are up to date, job 1 (failed) runs again.
    before = {j: (sweep / j / "summary.parquet").stat().st_mtime_ns for j in ("0", "2")}
    again = cli("-m", "secondary=faulty", "secondary.fault=none,raise_in_hook,young_all", *TINY, cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    assert again.stdout.count("up to date (same config and code), not run again") == 2
    assert {j: (sweep / j / "summary.parquet").stat().st_mtime_ns for j in ("0", "2")} == before
    assert "sweep/1: secondary.fault=raise_in_hook: failed: PluginError" in again.stderr
    # Another sweep (the failing value changed) is run only with --reuse, which starts it afresh.
    third = cli("-m", "--reuse", "secondary=faulty", "secondary.fault=none,ignore_invalidate", "seed=1", *TINY,
                cwd=tmp_path)  # fmt: skip
    assert third.returncode == 3 and "up to date" not in third.stdout, third.stdout
    assert pl.read_parquet(sweep / "0" / "summary.parquet")["seed"][0] == 1
    assert (sweep / "1" / "summary.parquet").is_file() and not (sweep / "1" / "failed.json").exists()
    assert not (sweep / "2").exists()


def test_results_from_other_code_are_not_up_to_date(tmp_path, monkeypatch):
    from conftest import config
    from mmnsim import output

    cfg = config("seed=3")
    output.write_results(tmp_path, cfg, {"accesses": 1}, [{"tick": 0, "accesses": 1}])
    assert output.up_to_date(tmp_path, cfg) and not output.up_to_date(tmp_path, config("seed=4"))
    monkeypatch.setattr(output, "code_hash", lambda cfg: "another version")
    assert not output.up_to_date(tmp_path, cfg)
