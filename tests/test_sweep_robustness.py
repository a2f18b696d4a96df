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
    assert "mmnsim: 1 of 3 jobs failed; the others' results are in sweep" in out.stderr
    assert "sweep/1: PluginError: secondary MMU 'faulty[guest0]' raised in invalidate_range_start" in out.stderr
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

    # Started again, with the failing job's value changed: job 0 and 2 are up to date, job 1 runs.
    before = {j: (sweep / j / "summary.parquet").stat().st_mtime_ns for j in ("0", "2")}
    again = cli("-m", "secondary=faulty", "secondary.fault=none,ignore_invalidate,young_all", *TINY, cwd=tmp_path)
    assert again.returncode == 3, again.stderr  # the sweep lists the jobs that violated invariants: 1 and 2
    assert again.stdout.count("up to date (same config and code), not run again") == 2
    assert {j: (sweep / j / "summary.parquet").stat().st_mtime_ns for j in ("0", "2")} == before
    assert (sweep / "1" / "summary.parquet").is_file() and not (sweep / "1" / "failed.json").exists()
    # A changed config is run again, even in a directory that has results.
    third = cli("-m", "secondary=faulty", "secondary.fault=none", "seed=1", *TINY, cwd=tmp_path)
    assert third.returncode == 0 and "up to date" not in third.stdout, third.stdout
    assert pl.read_parquet(sweep / "0" / "summary.parquet")["seed"][0] == 1


def test_results_from_other_code_are_not_up_to_date(tmp_path, monkeypatch):
    from conftest import config
    from mmnsim import output

    cfg = config("seed=3")
    output.write_results(tmp_path, cfg, {"accesses": 1}, [{"tick": 0, "accesses": 1}])
    assert output.up_to_date(tmp_path, cfg) and not output.up_to_date(tmp_path, config("seed=4"))
    monkeypatch.setattr(output, "code_hash", lambda cfg: "another version")
    assert not output.up_to_date(tmp_path, cfg)
