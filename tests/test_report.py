"""``mmnsim-report`` over a real (tiny) multirun, ``mmnsim-plugins``, and the launchers beyond joblib."""

import importlib.util
import subprocess
import sys
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import cli, config
from mmnsim import Simulation
from mmnsim.experiment import experiment_names, selected
from mmnsim.output import flatten, run_config
from mmnsim.report import compare, load, plot, plot_timeseries, table

TINY = ["guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "workload.accesses=50000",
        "engine.accesses_per_tick=16384"]  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(name)
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two modes x two seeds of a tiny overcommitted guest, plus one job directory whose run failed."""
    root = tmp_path_factory.mktemp("report")
    out = cli("-m", *TINY, "secondary.mode=pin,notifier", "seed=0,1", "hydra.sweep.dir=sweep", cwd=root)
    assert out.returncode == 0, out.stderr
    broken = root / "sweep" / "99" / ".hydra"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text("seed: 9\n")
    return root / "sweep"


def test_report_writes_results_with_provenance_and_lists_the_failed_run(sweep):
    out = tool("mmnsim-report", str(sweep), "--metrics", "pinned_pages_peak,swap_outs", cwd=sweep)
    assert out.returncode == 0, out.stderr
    results = pl.read_parquet(sweep / "results.parquet")
    assert results.height == 4
    assert sorted(results["secondary.mode"].unique()) == ["notifier", "pin"]
    for column in ("mmnsim_version", "git_commit", "config_hash", "seed", "run_dir"):
        assert results[column].null_count() == 0, column
    assert pl.read_csv(sweep / "results.csv").height == 4
    lines = out.stdout.splitlines()
    assert lines[0] == "| secondary.mode | runs | pinned_pages_peak | swap_outs |"
    pin = next(line for line in lines if line.startswith("| pin |"))
    notifier = next(line for line in lines if line.startswith("| notifier |"))
    assert pin.split("|")[2].strip() == "2" and pin.split("|")[3].strip() != "0"
    assert notifier.split("|")[3].strip() == "0"  # notifier mode pins nothing
    assert "1 runs failed or did not finish" in out.stdout and str(sweep / "99") in out.stdout


def test_baseline_comparison_is_the_percent_change_against_the_baseline_group(sweep):
    runs, varying, failed = load([sweep])
    assert set(varying) == {"secondary.mode", "seed"} and len(failed) == 1
    table = compare(runs, ["secondary.mode"], ["pinned_pages_peak", "secondary_faults"], "secondary.mode=pin")
    rows = {r["secondary.mode"]: r for r in table.iter_rows(named=True)}
    assert rows["notifier"]["pinned_pages_peak_%"] == pytest.approx(-100.0)
    expected = (rows["notifier"]["secondary_faults"] / rows["pin"]["secondary_faults"] - 1) * 100
    assert rows["notifier"]["secondary_faults_%"] == pytest.approx(expected)
    out = tool("mmnsim-report", str(sweep), "--baseline", "secondary.mode=pin", "--metrics", "pinned_pages_peak",
               cwd=sweep)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "| metric | secondary.mode=pin (2 runs) | secondary.mode=notifier (2 runs) |" in out.stdout
    assert "(-100.0%)" in out.stdout


def test_plots_are_written_as_png_named_for_what_varies(sweep, tmp_path):
    out = tool("mmnsim-report", str(sweep), "--plot", "seed", "major_faults", "--hue", "secondary.mode",
               "--timeseries", "swap_outs", "--out", str(tmp_path), cwd=sweep)  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = tool("mmnsim-report", str(sweep), "--plot", "seed", "major_faults", "--hue", "secondary.mode,seed",
               "--out", str(tmp_path), cwd=sweep)  # fmt: skip
    assert out.returncode == 0, out.stderr
    names = ("major_faults_by_seed_hue_secondary.mode.png", "swap_outs_over_time_hue_secondary.mode.png",
             "major_faults_by_seed_hue_secondary.mode+seed.png")  # fmt: skip
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name


def _drawn(monkeypatch) -> list:
    """Capture each figure's axis labels and legend entries as it is saved."""
    from matplotlib.figure import Figure

    drawn = []

    def savefig(fig, path, **kwargs):
        ax = fig.axes[0]
        legend = ax.get_legend()
        drawn.append((ax.get_xlabel(), ax.get_ylabel(), [t.get_text() for t in legend.get_texts()] if legend else []))

    monkeypatch.setattr(Figure, "savefig", savefig)
    return drawn


def test_several_hue_keys_give_a_line_per_combination_and_axes_carry_units(sweep, tmp_path, monkeypatch):
    drawn = _drawn(monkeypatch)
    runs, _, _ = load(str(sweep))
    plot(runs, "seed", "stall_fraction", "secondary.mode,seed", tmp_path / "a.png")
    plot_timeseries(runs, "sim_time_ns/accesses", ["secondary.mode", "seed"], tmp_path / "b.png")
    (x, y, legend), (tx, ty, tlegend) = drawn
    assert (x, y) == ("seed", "stall_fraction (fraction)")
    combos = {f"secondary.mode={m}, seed={s}" for m in ("pin", "notifier") for s in (0, 1)}
    assert set(legend) == combos and len(legend) == 4
    assert (tx, ty) == ("simulated time (s)", "sim_time_ns/accesses (ns per access)")
    assert set(tlegend) == combos


def test_load_takes_strings_and_table_groups_as_the_command_does(sweep):
    runs, varying, failed = load(str(sweep))
    assert runs.height == 4 and len(failed) == 1
    grouped = table(str(sweep), metrics=["swap_outs"])
    assert grouped.columns == ["secondary.mode", "runs", "swap_outs", "swap_outs_sd"]
    rows = {r["secondary.mode"]: r for r in grouped.iter_rows(named=True)}
    pin = runs.filter(pl.col("secondary.mode") == "pin")["swap_outs"]
    assert rows["pin"]["runs"] == 2 and rows["pin"]["swap_outs"] == pytest.approx(pin.mean())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metrics", "swap_outz"], "--metrics: no column 'swap_outz' in the results; closest: swap_outs,"),
        (["--baseline", "secondary.mode=pinn"], "--baseline secondary.mode=pinn: no run has secondary.mode=pinn"),
        (["--baseline", "secondary.mode"], "--baseline secondary.mode: give KEY=VALUE, the group to compare against, "
                                           "e.g. secondary.mode=notifier (values: notifier, pin)"),
        (["--metrics", "secondary.mode"], "--metrics: secondary.mode is not a number (a String column)"),
        (["--by", "host.nodes"], "--by: no column 'host.nodes' in the results; closest: host.numa_nodes"),
        (["--plot", "seed", "majr_faults"], "--plot: no column 'majr_faults' in the results; closest: major_faults"),
        (["--hue", "secondary.mod"], "--hue: no column 'secondary.mod' in the results; closest: secondary.mode"),
        (["--timeseries", "swap_outs/acesses"], "--timeseries: no column 'acesses' in the time series; closest: "
                                                "accesses"),
    ],
)  # fmt: skip
def test_bad_report_options_are_one_clear_error_before_any_work(sweep, args, message, tmp_path):
    (sweep / "results.parquet").unlink(missing_ok=True)
    good = ["--timeseries", "swap_outs"] if "--timeseries" not in args else ["--plot", "seed", "swap_outs"]
    out = tool("mmnsim-report", str(sweep), *args, *good, "--out", str(tmp_path), cwd=sweep)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (sweep / "results.parquet").exists() and not list(tmp_path.iterdir())  # nothing written


def test_report_of_a_directory_without_runs_is_an_error(tmp_path):
    out = tool("mmnsim-report", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "no summary.parquet under" in out.stderr


def test_plugins_command_lists_components_with_their_hooks(tmp_path):
    out = tool("mmnsim-plugins", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[1]: line for line in out.stdout.splitlines()[1:]}
    assert rows["kvm"].startswith("secondary") and "invalidate_range_start" in rows["kvm"]
    assert "clear_flush_young" in rows["kvm"] and "built-in" in rows["kvm"]
    assert rows["swap"].startswith("policy") and "reclaim" in rows["swap"]
    assert {"rdma", "gpu", "numa", "defrag", "eager_release"} <= rows.keys()


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher not installed")  # fmt: skip
def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    """The SLURM launcher's local executor: the same sweep, each job in its own submitit process."""
    out = cli("-m", *TINY, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
              "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "sweep").rglob("summary.parquet"))) == 2


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install -e '.[ray]')")
def test_ray_launcher_runs_a_sweep_on_a_local_cluster(tmp_path):
    out = cli("-m", *TINY, "seed=0,1", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
              "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "sweep").rglob("summary.parquet"))) == 2


@pytest.mark.parametrize("name", experiment_names())
def test_each_experiment_composes_runs_and_reports_metrics_that_exist(name):
    """A short run of each prepared experiment (first value of each swept key) has every metric and key
    its report section names, and no invariant violations."""
    spec = yaml.safe_load((resources.files("mmnsim.conf") / "experiment" / f"{name}.yaml").read_text())
    sweep = spec["hydra"]["sweeper"]["params"]
    first = [f"{key}={str(values).split(',')[0]}" for key, values in sweep.items()]
    cfg = config(f"+experiment={name}", *first, "workload.accesses=20000")
    row = flatten(run_config(cfg))
    sim = Simulation(cfg)
    metrics = sim.run()
    assert metrics["invariant_violations"] == 0 or sim.violations_expected  # release_cost's unpinned strawman
    report = spec["report"]
    missing = [m for m in report["metrics"] if m not in metrics]
    assert not missing, missing
    assert all(key in row for key in report["by"]), report["by"]
    for p in report["plots"]:
        assert all(k in row for k in (p.get("x"), p.get("hue"), p.get("style")) if k and k != "seed")
        assert p.get("y", "accesses") in metrics


def test_unknown_experiment_names_the_accepted_ones(tmp_path):
    out = tool("mmnsim-experiment", "swapp", cwd=tmp_path)
    assert out.returncode != 0
    assert (
        "unknown experiment 'swapp'; accepted: defrag, defrag_real, devices, numa, numa_guests, passthrough, "
        "release_cost, release_cost_real, swap, swap_real, all" in out.stderr
    )


def test_all_leaves_out_the_real_twins_experiments_which_run_only_by_name():
    """`mmnsim-experiment all` must run anywhere: the NAME_real experiments (report.real_twin) need root and
    /dev/kvm, so only their own name runs them."""
    real = [n for n in experiment_names() if n.endswith("_real")]
    assert real, "no real twin experiment to leave out"
    assert set(selected("all")) == set(experiment_names()) - set(real)
    assert selected("swap_real") == ["swap_real"]
