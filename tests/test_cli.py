"""The ``mmnsim`` command: results and provenance on disk, sweeps, and clear errors for bad input."""

import io
from importlib import resources

import polars as pl
import pytest

from conftest import cli, simulation
from mmnsim.progress import ProgressBar

# The options shipped with mmnsim (conf/<group>/*.yaml); installed plugin packages may add more.
BUILTIN = {g: sorted(p.name[:-5] for p in (resources.files("mmnsim.conf") / g).iterdir() if p.name.endswith(".yaml"))
           for g in ("secondary", "workload", "policies")}  # fmt: skip

TINY = ["guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "workload.accesses=50000",
        "engine.accesses_per_tick=16384"]  # fmt: skip


def results(root):
    return sorted(root.rglob("summary.parquet"))


def test_a_run_writes_summary_and_timeseries_with_provenance(workdir):
    out = cli(*TINY, cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert "invariant violations: 0" in out.stdout
    [summary] = results(workdir)
    row = pl.read_parquet(summary).row(0, named=True)
    for column in (
        "accesses",
        "pinned_pages_peak",
        "secondary_faults",
        "minor_faults",
        "major_faults",
        "swap_outs",
        "swap_ins",
        "invalidations",
        "pages_zapped",
        "tlb_flushes",
        "flush_cost_ns",
        "oom_events",
        "integrity_violations",
        "isolation_violations",
        "sim_time_ns",
        "wall_seconds",
    ):
        assert column in row, column
    assert row["host.memory_mib"] == 24 and row["secondary.mode"] == "notifier"
    assert row["mmnsim_version"] and row["git_commit"] and len(row["config_hash"]) == 16
    ts = pl.read_parquet(summary.with_name("timeseries.parquet"))
    assert ts.height == row["ticks"] and ts["accesses"][-1] == row["accesses"]


def test_same_seed_same_results_and_a_joblib_multirun(workdir):
    out = cli("-m", *TINY, "seed=1,1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=workdir)
    assert out.returncode == 0, out.stderr
    rows = [pl.read_parquet(p).row(0, named=True) for p in results(workdir)]
    assert len(rows) == 3
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(r)
    a, b = by_seed[1]
    for key in ("major_faults", "secondary_faults", "swap_outs", "tlb_flushes", "sim_time_ns"):
        assert a[key] == b[key], key
    assert by_seed[2][0]["major_faults"] != a["major_faults"]


@pytest.mark.parametrize(
    "override, message",
    [
        # The built-in options are listed; installed plugin packages may add more to each list.
        ("secondary=kvmm", ("secondary: unknown option 'kvmm'; accepted: ", *BUILTIN["secondary"])),
        ("workload=zipff", ("workload: unknown option 'zipff'; accepted: ", *BUILTIN["workload"])),
        ("policies=[swapp]", ("policies: unknown option 'swapp'; accepted: ", *BUILTIN["policies"])),
        ("host.memory_mib=0", "host.memory_mib: must be > 0, got 0"),
        ("guest.memory_mib=-5", "guest.memory_mib: must be > 0, got -5"),
        (
            "guest.memory_mib=100000 host.oom=fail",
            "guest.memory_mib: the tenants need 100000 MiB but host.memory_mib + host.swap_mib hold only 88 MiB",
        ),
        ("host.memroy_mib=3", "host.memroy_mib: unknown key; accepted keys under host: memory_mib, numa_nodes"),
        ("secondary.mode=pinn", "secondary.mode: invalid value 'pinn'; accepted: pin, notifier, unpinned"),
        ("seed=abc", "seed: expected a non-negative integer, got 'abc'"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_no_result_files(workdir, override, message):
    out = cli(*TINY, *override.split(), cwd=workdir)
    assert out.returncode == 2
    line = next(li for li in out.stderr.splitlines() if li.startswith("mmnsim: "))
    if isinstance(message, str):
        assert message in line
    else:  # (prefix, *names): the names are among those accepted
        prefix, *names = message
        assert prefix in line and set(names) <= set(line.partition("accepted: ")[2].split(", ")), line
    assert "Traceback" not in out.stderr
    assert results(workdir) == []


def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_any_job(workdir):
    out = cli("-m", *TINY, "secondary.mode=pin,notifierr", cwd=workdir)
    assert out.returncode == 2
    assert "secondary.mode: invalid value 'notifierr'; accepted: pin, notifier, unpinned" in out.stderr
    assert results(workdir) == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_reaches_one_and_the_bar_draws_only_on_a_terminal():
    seen = []
    simulation().run(progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and seen[0] < 0.5
    tty, pipe = _Terminal(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar(stream, interval=0.0)
        bar(0.5)
        bar.close()
    assert " 50.0% |" in tty.getvalue() and "left" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_a_sweeps_scalar_values_are_checked_as_composed_without_composing_each():
    """check_overrides derives a sweep's scalar alternatives from the first job's config (Hydra applies a value
    override last, by OmegaConf.update); the result must be the config composing gives, and anything else
    (a config group, a mapping, a + or ~) must be composed."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from mmnsim import cli as mcli

    first = ["seed=0", "host.memory_mib=512", "secondary.mode=pin", "kernel=6.x"]
    with initialize_config_module("mmnsim.conf", version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        base = mcli._without_hydra(compose("config", overrides=first, return_hydra_config=True))
        for i, alternative in (
            (0, "seed=7"),
            (1, "host.memory_mib=${guest.memory_mib}"),
            (2, "secondary.mode=notifier"),
        ):
            variant = mcli._plain_variant(base, parser, first[i], alternative)
            composed = compose("config", overrides=[*first[:i], alternative, *first[i + 1 :]])
            assert variant is not None
            assert OmegaConf.to_container(variant) == OmegaConf.to_container(composed)
        kept = OmegaConf.to_container(base)  # the base is left as it was
        assert (kept["seed"], kept["host"]["memory_mib"], kept["secondary"]["mode"]) == (0, 512, "pin")
        assert mcli._plain_variant(base, parser, first[3], "kernel=6.1") is None  # a config group
        assert mcli._plain_variant(base, parser, first[1], "+host.nosuch=1") is None
        assert mcli._plain_variant(base, parser, "guest.memory_mib=64", "guest={memory_mib: 8}") is None


def test_a_bad_value_late_in_a_sweep_is_still_an_input_error(workdir):
    out = cli("-m", "workload.accesses=10", "guest.memory_mib=16", "host.memory_mib=32", "seed=0,1,-2", cwd=workdir)
    assert out.returncode == 2 and "seed" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (workdir / "multirun").exists() or not any((workdir / "multirun").rglob("summary.parquet"))
