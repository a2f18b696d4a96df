"""``mmnsim-experiment NAME``: run one of the prepared experiments and write its table and plots.

    mmnsim-experiment swap              # runs `mmnsim -m +experiment=swap`, then reports into experiments/swap/
    mmnsim-experiment all               # the five, one after the other (a few minutes on 2 cores)
    mmnsim-experiment swap_real         # a NAME_real experiment: the model beside the real twin (root, /dev/kvm)
    mmnsim-experiment defrag --sensitivity  # vary the costs over their ranges (framework/sensitivity.py)

An experiment is a config under ``conf/experiment/``: a multirun sweep (``hydra.sweeper.params``) with
seed replicates, run with the joblib launcher, plus a ``report`` section saying how to tabulate and plot
it. The runs go to ``multirun/experiment-NAME`` (replaced each time); ``table.md`` and the plots go to
``experiments/NAME/`` under the current directory (the repository root, normally), or ``--out``, and the
table replaces the one between the markers in that folder's README.md.

Before anything runs, every override (``--sensitivity`` ones included) is checked as ``mmnsim`` checks it,
and the output folder must be writable (else one line, exit status 2). The experiment then holds its
sweep directory's lock (``sweeplock``) from before it clears the directory to after its table is written,
and hands it to the sweep it starts: a second ``mmnsim-experiment NAME`` (or any sweep into that
directory) stops at once with the lock's message, and nothing another process holds is ever deleted.
"""

import sys
from importlib import resources
from pathlib import Path
from typing import NoReturn

import polars as pl
import yaml

from . import sensitivity
from .cli import check_overrides
from .config import ConfigError
from .entry import ArgumentParser, console_script
from .output import NotAFile, check_writable, disk_error, write_bytes_atomic
from .report import (
    ReportError,
    compare,
    load,
    markdown,
    markdown_compare,
    plot,
    plot_timeseries,
    summarize,
    write_results,
)
from .sweeplock import SweepBusy, holding


def experiment_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in (resources.files("mmnsim.conf") / "experiment").iterdir()
                  if p.name.endswith(".yaml"))  # fmt: skip


@console_script("mmnsim-experiment")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="mmnsim-experiment", description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"one of: {', '.join(experiment_names())}; or all")
    parser.add_argument("--out", type=Path, help="where table.md and the plots go (default experiments/NAME)")
    parser.add_argument("--report-only", action="store_true", help="do not run; report the last runs")
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="vary every cost over its range (one at a time), write sensitivity.md and tornado.png",
    )
    parser.add_argument("overrides", nargs="*", help="extra overrides for the sweep (e.g. hydra.launcher.n_jobs=1)")
    args = parser.parse_intermixed_args(argv)  # options may follow the name: NAME --sensitivity
    if args.name not in (*experiment_names(), "all"):
        _input_error(f"unknown experiment {args.name!r}; accepted: {', '.join(experiment_names())}, all")
    names = selected(args.name)
    if args.out and len(names) > 1:
        _input_error("--out needs one experiment, not all")
    if args.sensitivity and args.name == "all":  # the experiments that define a headline
        names = [n for n in names if _spec(n).get("sensitivity")]
    if not args.report_only:
        for name in names:  # every job of every sweep checked before the first runs
            spec_overrides = (_spec(name).get("sensitivity") or {}).get("overrides", []) if args.sensitivity else []
            try:
                check_overrides(["-m", f"+experiment={name}", *spec_overrides, *args.overrides])
            except ConfigError as exc:
                _input_error(f"{name}: {exc}")
    for name in names:  # where the runs and the table go: writable before anything runs
        folders = [args.out or Path("experiments") / name]
        if not args.report_only:
            folders.append(Path("multirun") / f"{'sensitivity' if args.sensitivity else 'experiment'}-{name}")
        try:
            for folder in folders:
                check_writable(folder)
        except OSError as exc:
            _input_error(disk_error(exc))
    for name in names:
        out = args.out or Path("experiments") / name
        try:
            if args.sensitivity:
                run_sensitivity(name, out, args.report_only, args.overrides)
            else:
                run_experiment(name, out, args.report_only, args.overrides)
        except (ReportError, ConfigError, SweepBusy) as exc:
            _input_error(str(exc))
        except OSError as exc:  # a full disk, or a folder made read-only since the check
            print(f"mmnsim-experiment: {disk_error(exc)}", file=sys.stderr)
            sys.exit(2 if isinstance(exc, NotAFile) else 1)


def selected(name: str) -> list[str]:
    """The experiments ``name`` stands for: itself, or for ``all`` every experiment but the real twin's
    (``report.real_twin``: they need root, /dev/kvm and a memory cgroup, so they run only when named)."""
    if name != "all":
        return [name]
    return [n for n in experiment_names() if not _spec(n).get("report", {}).get("real_twin")]


def _spec(name: str) -> dict:
    return yaml.safe_load((resources.files("mmnsim.conf") / "experiment" / f"{name}.yaml").read_text())


def run_sensitivity(name: str, out: Path, report_only: bool, overrides: list[str]) -> None:
    spec = _spec(name)
    if not spec.get("sensitivity"):
        _input_error(f"{name} has no sensitivity section in conf/experiment/{name}.yaml")
    sensitivity.run(name, spec["sensitivity"], out, report_only, overrides)


def run_experiment(name: str, out: Path, report_only: bool, overrides: list[str]) -> None:
    spec = _spec(name)
    runs_dir = Path("multirun") / f"experiment-{name}"
    if report_only and not runs_dir.is_dir():
        _input_error(f"nothing to report: no runs in {runs_dir} (run the experiment without --report-only first)")
    with holding(runs_dir) as lock:
        if not report_only:
            lock.clear()  # the last runs: only this experiment, holding the lock, removes them
            exe = Path(sys.executable).with_name("mmnsim")
            command = [str(exe), "-m", f"+experiment={name}", f"hydra.sweep.dir={runs_dir}", *overrides]
            print("running:", " ".join(command[1:]), flush=True)
            if lock.run_sweep(command) != 0:
                print(f"mmnsim-experiment: some runs of {name} failed; reporting the others", file=sys.stderr)
        report(runs_dir, out, spec.get("report", {}))


def _input_error(message: str) -> NoReturn:
    print(f"mmnsim-experiment: {message}", file=sys.stderr)
    sys.exit(2)


def report(runs_dir: Path, out: Path, spec: dict) -> None:
    """Results files in ``runs_dir``; the table (also into README.md) and the plots in ``out``."""
    runs, varying, failed = load([runs_dir])
    write_results(runs, runs_dir)
    by = spec.get("by") or [k for k in varying if k != "seed"]
    metrics = spec["metrics"]
    if spec.get("baseline"):
        text = markdown_compare(compare(runs, by, metrics, spec["baseline"]), spec["baseline"], metrics)
    else:
        text = markdown(summarize(runs, by, metrics), metrics)
    text += _oom_kills(runs, by)
    if failed:
        text += f"\n\n{len(failed)} runs failed: " + ", ".join(map(str, failed))
    write_bytes_atomic((text + "\n").encode(), out / "table.md")
    _update_readme(out / "README.md", text)
    print(text)
    for i, p in enumerate(spec.get("plots", [])):
        target = out / p.get("file", f"plot{i}.png")
        shown = runs
        for key, value in p.get("where", {}).items():  # plot a slice of the sweep
            shown = shown.filter(pl.col(key).cast(pl.String) == str(value))
        if "timeseries" in p:
            plot_timeseries(shown, p["timeseries"], p.get("hue"), target, p.get("title", ""), p.get("style"))
        else:
            plot(shown, p["x"], p["y"], p.get("hue"), target, p.get("title", ""), p.get("categorical", False))
        print(f"plot: {target}")


def _oom_kills(runs: pl.DataFrame, by: list[str]) -> str:
    """Who the OOM killer killed in each run that had a kill, and when (the ``oom_victims`` column)."""
    if "oom_victims" not in runs.columns:
        return ""
    order = [*by, "seed"] if "seed" in runs.columns else by
    killed = runs.filter(pl.col("oom_victims").fill_null("") != "").sort(order)
    if killed.is_empty():
        return ""
    lines = [f"- {', '.join(f'{k}={r[k]}' for k in [*by, 'seed'] if k in r)}: {r['oom_victims']}"
             for r in killed.iter_rows(named=True)]  # fmt: skip
    return "\n\nOOM kills (victim, simulated time, tick, badness, reaper):\n\n" + "\n".join(lines)


TABLE_BEGIN, TABLE_END = "<!-- table: written by mmnsim-experiment -->", "<!-- end of table -->"


def _update_readme(readme: Path, table: str) -> None:
    """Put the new table between the markers of the experiment's README.md, if it has them."""
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    head, begin, rest = text.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if begin and end:
        write_bytes_atomic(f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{tail}".encode(), readme)


if __name__ == "__main__":
    main()
