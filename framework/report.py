"""``mmnsim-report``: one table from the runs of one or more sweeps, comparisons, and plots.

    mmnsim-report multirun/2026-11-26/10-00-00
    mmnsim-report DIR --by secondary.mode --metrics swap_outs,oom_events,tlb_flushes
    mmnsim-report DIR --baseline secondary.mode=pin          # mmtests-style: change against the baseline
    mmnsim-report DIR --plot guest.memory_mib major_faults --hue secondary.mode,secondary.name
    mmnsim-report DIR --timeseries remote_accesses/accesses --hue secondary.mode
    mmnsim-report --explain stall_fraction                  # what a metric means, its unit, its kernel counter

It reads every run's ``summary.parquet`` under the directories (diagonally concatenated, since plugins add
columns), keeps the overrides that tell the runs apart (from each run's ``.hydra/overrides.yaml``),
writes ``results.parquet`` and ``results.csv`` (with every run's provenance) into the first directory,
and prints a markdown table: per group of the ``--by`` keys (by default every override but ``seed``), the
mean of each metric over the seed replicates, and its standard deviation when there are several. A run
directory without a summary (a job that failed) is listed, not silently dropped.
"""

import difflib
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from .entry import ArgumentParser, console_script
from .metrics import Catalogue, MetricError, catalogue, installed_catalogue
from .metrics import markdown as metrics_markdown
from .output import FAILED, TIMESERIES, read_parquet, read_parquet_schema, write_atomic, write_bytes_atomic

PROVENANCE = ("mmnsim_version", "git_commit", "code_hash", "config_hash")
DEFAULT_METRICS = (
    "accesses", "accesses_failed", "sim_time_ns", "sim_time_ns_per_access", "secondary_faults", "major_faults",
    "swap_outs", "oom_events", "pinned_pages_peak", "invalidations", "tlb_flushes", "flush_cost_ns",
    "stall_fraction", "invariant_violations",
)  # fmt: skip
NOT_SETTINGS = (*PROVENANCE, "settings_hash", "run_dir", "seed")  # summary columns that are not run settings


class ReportError(ValueError):
    """Nothing to report, or an option names what the results do not have."""


def run_dirs(roots: list[Path]) -> list[Path]:
    """Every Hydra job directory under ``roots`` (one holding ``.hydra/config.yaml``), each once however it is
    reached: a directory given twice, under another spelling, through a symbolic link, or as the child of
    another root is one run (the first path that reaches it names it)."""
    found: dict[tuple[int, int], Path] = {}
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root}: not a directory")
        for job in sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml")):
            st = job.stat()
            found.setdefault((st.st_dev, st.st_ino), job)
    return sorted(found.values())


def shown_path(path: Path) -> str:
    """A path as text for the results (polars holds UTF-8): its bytes read as UTF-8, whatever the locale."""
    return os.fsencode(path).decode("utf-8", "replace")


def local_path(text: str) -> Path:
    """The path a ``shown_path`` text names, in this process's file-system encoding."""
    return Path(os.fsdecode(text.encode("utf-8")))


def unreadable(path: Path) -> str | None:
    """Why the parquet file or failed.json at ``path`` cannot be read (one line), or None if it can."""
    try:
        if path.suffix == ".json":
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict) or not isinstance(record.get("error"), str):
                return "no 'error' entry"
        else:
            read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - truncated, garbage or unreadable: the report goes on without it
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def load(roots: str | Path | Sequence[str | Path],
         problems: list[tuple[Path, str]] | None = None) -> tuple[pl.DataFrame, list[str], list[Path]]:  # fmt: skip
    """All runs as one frame, the override keys that tell them apart, and the directories that failed.
    ``roots``: one directory or several, as strings or paths. For the table the command prints (seeds
    averaged), ``table``. A summary that cannot be read is left out and, with ``problems``, appended to it
    as (path, reason)."""
    roots = [Path(r) for r in ([roots] if isinstance(roots, str | Path) else roots)]
    frames, failed, keys = [], [], []
    for d in run_dirs(roots):
        summary = d / "summary.parquet"
        if not summary.is_file():
            failed.append(d)
            continue
        try:
            frame = read_parquet(summary).with_columns(pl.lit(shown_path(d)).alias("run_dir"))
        except Exception as exc:  # noqa: BLE001 - truncated or garbage: listed, the others reported
            if problems is not None:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                problems.append((summary, f"{reason} (the run is left out)"))
            continue
        overrides, problem = _overrides_or_problem(d)
        if problem is not None and problems is not None:  # the run counts: its config is in its summary
            problems.append((problem[0], f"{problem[1]} (the run is counted; its overrides are not known)"))
        for key, value in overrides.items():
            if key not in frame.columns:
                frame = frame.with_columns(pl.lit(value).alias(key))
            if key not in keys:
                keys.append(key)
        frames.append(frame)
    if not frames:
        where = ", ".join(map(str, roots))
        if problems:
            raise ReportError(f"no readable summary.parquet under {where} ({len(problems)} unreadable, the first "
                              f"{problems[0][0]}: {problems[0][1]})")  # fmt: skip
        raise ReportError(f"no summary.parquet under {where}")
    runs = pl.concat(frames, how="diagonal_relaxed")
    varying = [k for k in keys if k in runs.columns and runs[k].n_unique() > 1]
    return runs, varying, failed


def table(roots: str | Path | Sequence[str | Path], by: Sequence[str] | None = None,
          metrics: Sequence[str] | None = None) -> pl.DataFrame:  # fmt: skip
    """What ``mmnsim-report`` prints, as a frame: the mean (and standard deviation) of ``metrics`` (default
    ``DEFAULT_METRICS``) over the seed replicates of each group of ``by`` (default: every override that
    varies but ``seed``), with the number of runs per group."""
    runs, varying, _ = load(roots)
    by = list(by) if by is not None else [k for k in varying if k != "seed"]
    metrics = list(metrics) if metrics is not None else [m for m in DEFAULT_METRICS if m in runs.columns]
    _check_columns(runs, by, "--by")
    return summarize(runs, by + hidden_differences(runs, by), metrics)


def hidden_differences(runs: pl.DataFrame, by: list[str]) -> list[str]:
    """Columns not in ``by`` in which runs of one group differ, other than the seed (whose replicates a group
    averages): ``code_hash`` (runs of other code) and settings (config keys). A group must not average
    them: ``table`` and the command split by these columns too, and say so. Settings are told apart by
    each run's ``settings_hash`` (its config without the seed); the columns named are the config keys,
    the columns that are neither metrics nor provenance."""

    def varies(column: str) -> bool:
        counts = runs.group_by(by).agg(pl.col(column).n_unique()) if by else runs.select(pl.col(column).n_unique())
        return counts[column].max() > 1

    extra = [c for c in ("code_hash",) if c in runs.columns and c not in by and varies(c)]
    if "settings_hash" in runs.columns and runs["settings_hash"].null_count() == 0 and not varies("settings_hash"):
        return extra
    settings = [c for c in runs.columns if c not in (*by, *NOT_SETTINGS) and _catalogue().get(c) is None]
    named = [c for c in settings if varies(c)]
    if not named and "settings_hash" in runs.columns and varies("settings_hash"):
        named = ["settings_hash"]  # differences no column shows (a hash collision aside, cannot happen)
    return extra + named


def _overrides(run: Path) -> dict[str, str]:
    """The overrides a run was started with (from its ``.hydra/overrides.yaml``); {} when unreadable."""
    return _overrides_or_problem(run)[0]


def _overrides_or_problem(run: Path) -> tuple[dict[str, str], tuple[Path, str] | None]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}, None
    try:
        items = yaml.safe_load(path.read_bytes()) or []
        if not isinstance(items, list):
            raise ValueError(f"a list of overrides expected, got {type(items).__name__}")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return {}, (path, (str(exc).strip().splitlines() or [type(exc).__name__])[0])
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not key.startswith("hydra"):
            out[key] = value
    return out, None


def summarize(runs: pl.DataFrame, by: list[str], metrics: list[str]) -> pl.DataFrame:
    """Mean (and standard deviation, with replicates) of each metric per group of ``by``."""
    _check_columns(runs, [*by, *metrics])
    aggs = [pl.len().alias("runs")]
    for m in metrics:
        aggs += [pl.col(m).cast(pl.Float64).mean().alias(m), pl.col(m).cast(pl.Float64).std().alias(f"{m}_sd")]
    table = runs.group_by(by, maintain_order=True).agg(aggs).sort(by) if by else runs.select(aggs)
    if table["runs"].max() <= 1:
        table = table.drop([f"{m}_sd" for m in metrics])
    return table


def compare(runs: pl.DataFrame, by: list[str], metrics: list[str], baseline: str) -> pl.DataFrame:
    """Each group's metrics against the baseline group's, as value and percent change (mmtests style)."""
    key, value = _baseline(runs, baseline)
    if key not in by:
        by = [key, *by]
    table = summarize(runs, by, metrics)
    column = table[key].cast(pl.String)
    rest = [k for k in by if k != key]
    base = table.filter(column == value).select([*rest, *[pl.col(m).alias(f"{m}_base") for m in metrics]])
    joined = table.join(base, on=rest, how="left") if rest else table.join(base, how="cross")
    for m in metrics:
        change = (pl.col(m) - pl.col(f"{m}_base")) / pl.col(f"{m}_base").abs() * 100
        joined = joined.with_columns(pl.when(pl.col(f"{m}_base") != 0).then(change).otherwise(None).alias(f"{m}_%"))
    order = [*by, "runs"] + [c for m in metrics for c in (m, f"{m}_sd", f"{m}_%") if c in joined.columns]
    return joined.select(order)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _decimals(values) -> int:
    """The decimals one column of numbers is printed with: none if every value is whole, else enough for
    three significant digits of its smallest fractional value (at most 6), so that every cell of a column
    has one format."""
    numbers = [abs(float(v)) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    fractional = [v for v in numbers if not np.isnan(v) and not v.is_integer()]
    if not fractional:
        return 0
    return int(min(max(2 - np.floor(np.log10(min(fractional))), 0), 6))


def _cell(v, decimals: int | None = None) -> str:
    """A cell: a number with thousands separators and ``decimals`` (None: as many as it needs for itself)."""
    if _missing(v):
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return f"{v:,.{_decimals([v]) if decimals is None else decimals}f}"
    return str(v)


def _value(row: dict, m: str, decimals: int | None = None) -> str:
    """``mean ± sd`` (the spread only when the replicates differ), both with the column's decimals."""
    sd = row.get(f"{m}_sd")
    if sd is None or np.isnan(sd) or sd <= 0:
        return _cell(row[m], decimals)
    shown = _cell(sd, decimals)
    if decimals is not None and float(shown.replace(",", "")) == 0:  # a spread the column's format rounds away
        shown = f"<{10.0**-decimals:.{decimals}f}"
    return f"{_cell(row[m], decimals)} ± {shown}"


def markdown(table: pl.DataFrame, metrics: list[str] | None = None) -> str:
    """A markdown table, one row per group, the numbers of each column in one format. With ``metrics``
    (columns of a ``summarize`` table), each metric is one column of ``mean ± sd``; without, every column
    as it is."""
    if metrics is None:
        digits = [_decimals(table[c].to_list()) for c in table.columns]
        columns = table.columns
        rows = [[_cell(v, d) for v, d in zip(r, digits, strict=True)] for r in table.iter_rows()]
    else:
        keys = [c for c in table.columns if c not in metrics and not c.endswith(("_sd", "_%"))]
        columns = [*keys, *metrics]
        digits = {c: _decimals(table[c].to_list()) for c in columns}
        rows = [[_cell(r[k], digits[k]) for k in keys] + [_value(r, m, digits[m]) for m in metrics]
                for r in table.iter_rows(named=True)]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def time_note(runs: pl.DataFrame, metrics: list[str]) -> str:
    """The line under a table that shows simulated time: what sim_time_ns_per_access divides by."""
    if "sim_time_ns_per_access" not in metrics and "sim_time_ns" not in metrics:
        return ""
    vcpus = runs["guest.vcpus"].unique().to_list() if "guest.vcpus" in runs.columns else []
    n = str(vcpus[0]) if len(vcpus) == 1 else "N"
    return (f"sim_time_ns: simulated wall-clock time; sim_time_ns_per_access: sim_time_ns per completed access, "
            f"every CPU's accesses counted: a guest's {n} vCPUs complete about {n} accesses in that time, so one "
            f"vCPU's access takes about {n} times as long (effective_access_ns is per access of one CPU; "
            "docs/time.md)")  # fmt: skip


def markdown_compare(table: pl.DataFrame, baseline: str, metrics: list[str]) -> str:
    """A ``compare`` table the mmtests way: one table per group of the other keys, a row per metric, a
    column per value of the baseline key (the baseline first), each cell ``mean ± sd (change%)``."""
    key, _, value = baseline.partition("=")
    rest = [c for c in table.columns if c not in (key, "runs") and c not in metrics and not c.endswith(("_sd", "_%"))]
    sections = []
    groups = table.partition_by(rest, as_dict=True, maintain_order=True) if rest else {(): table}
    for names, group in groups.items():
        rows = sorted(group.iter_rows(named=True), key=lambda r: str(r[key]) != value)
        head = [f"{key}={r[key]} ({r['runs']} runs)" for r in rows]
        lines = ["| metric | " + " | ".join(head) + " |", "|---|" + "---|" * len(rows)]
        for m in metrics:
            cells = []
            digits = _decimals([r[m] for r in rows])  # one format for a metric's row
            for r in rows:
                change = r.get(f"{m}_%")
                pct = f" ({change:+.1f}%)" if str(r[key]) != value and change is not None else ""
                cells.append(_value(r, m, digits) + pct)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        title = ", ".join(f"{k}={v}" for k, v in zip(rest, names, strict=True))
        sections.append((f"**{title}**\n\n" if title else "") + "\n".join(lines))
    return "\n\n".join(sections)


def _keys(keys: str | Sequence[str] | None) -> list[str]:
    """``--hue``-like keys: None, one key, a comma-separated string, or a list."""
    if not keys:
        return []
    return [k for k in keys.split(",") if k] if isinstance(keys, str) else list(keys)


def _label(keys: list[str], values: Sequence) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))


@cache
def _catalogue() -> Catalogue:
    try:
        return installed_catalogue()
    except Exception:  # noqa: BLE001 - a broken plugin costs the plots their units, not the report
        return catalogue()


def axis_label(column: str) -> str:
    """A column's name with its unit from the metrics registry (``sim_time_ns (ns)``); a ratio ``a/b`` gets
    the ratio of the units; a config key its bare name."""
    num, _, den = column.partition("/")
    units = [m.unit if (m := _catalogue().get(c)) is not None else None for c in (num, *([den] if den else []))]
    if None in units:
        return column
    if den:
        return f"{column} ({units[0]} per {_singular(units[1])})" if units[0] != units[1] else f"{column} (ratio)"
    return f"{column} ({units[0]})"


def _singular(unit: str) -> str:
    """A count's unit in the singular, for "per ...": accesses -> access, pages -> page (ns, s stay)."""
    if unit.endswith("sses"):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") and unit not in ("ns", "s") else unit


def plot_name(y: str, x: str | None = None, hue: str | Sequence[str] | None = None) -> str:
    """The file name of a plot: what it shows and what varies in it (y, x or time, the hue keys)."""
    hues = _keys(hue)
    parts = [y.replace("/", "_per_"), f"by_{x}" if x else "over_time", *([f"hue_{'+'.join(hues)}"] if hues else [])]
    return re.sub(r"[^\w.=+-]+", "_", "_".join(parts)) + ".png"


def plot(runs: pl.DataFrame, x: str, y: str, hue: str | Sequence[str] | None, out: Path, title: str = "",
         categorical: bool = False) -> Path:  # fmt: skip
    """Mean of ``y`` against ``x`` with the replicates' spread as error bars, a line (colour and legend
    entry) per combination of the ``hue`` keys' values; ``x`` is an evenly spaced category axis when it is
    not numeric, or when ``categorical``. Axes carry the registry's units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hues = _keys(hue)
    _check_columns(runs, [x, y, *hues], "--plot/--hue")
    _check_numeric(runs, [y], "--plot", "the plot draws the mean of Y")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    groups = runs.partition_by(hues, as_dict=True, maintain_order=True) if hues else {("all",): runs}
    for i, (name, g) in enumerate(groups.items()):
        value = pl.col(y).cast(pl.Float64)
        s = g.group_by(x).agg(value.mean().alias("m"), value.std().alias("sd")).sort(x)
        xs = s[x].to_list()
        numeric = not categorical and all(isinstance(v, int | float) for v in xs)
        pos = xs if numeric else list(range(len(xs)))
        ax.errorbar(pos, s["m"].to_list(), yerr=s["sd"].fill_null(0).to_list(), marker="o", capsize=3,
                    color=f"C{i % 10}", label=_label(hues, name) if hues else None)  # fmt: skip
        if not numeric:
            ax.set_xticks(pos, [str(v) for v in xs])
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_title(title or f"{y} by {x}")
    ax.grid(alpha=0.3)
    if hues and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return out


def save_figure(fig, target: Path) -> None:
    """Save a matplotlib figure whole or not at all (``output.write_bytes_atomic``), then close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=Path(target).suffix.lstrip(".") or "png", dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(buffer.getbuffer(), Path(target))


def plot_timeseries(runs: pl.DataFrame, y: str, hue: str | Sequence[str] | None, out: Path, title: str = "",
                    style: str | Sequence[str] | None = None) -> Path:  # fmt: skip
    """``y`` per tick over simulated time, from each run's timeseries.parquet, one line per run: a colour
    per combination of the ``hue`` keys' values, a line style per ``style`` combination. ``a/b`` plots the
    ratio of the per-tick increments of two counters (``remote_accesses/accesses``: the remote fraction of
    each tick's accesses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hues, styles = _keys(hue), _keys(style)
    _check_columns(runs, [*hues, *styles], "--hue")
    _check_timeseries(runs, y)
    combos = runs.select(hues).unique(maintain_order=True).rows() if hues else []
    colours = {v: f"C{i % 10}" for i, v in enumerate(combos)}
    dashes = {
        v: ("-", "--", ":", "-.")[i % 4]
        for i, v in enumerate(runs.select(styles).unique(maintain_order=True).rows() if styles else [])
    }
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labelled = set()
    num, _, den = y.partition("/")
    for row in runs.iter_rows(named=True):
        path = local_path(row["run_dir"]) / TIMESERIES
        if not path.is_file() or unreadable(path):  # main() lists the unreadable ones
            continue
        ts = read_parquet(path)
        if not {num, den or num} <= set(ts.columns):  # main() lists the runs without the column
            continue
        values = ts[num].diff() / ts[den].diff() if den else ts[num]
        key = (tuple(row[k] for k in hues), tuple(row[k] for k in styles))
        label = ", ".join(x for x in (_label(hues, key[0]), _label(styles, key[1])) if x) or None
        ax.plot((ts["sim_time_ns"] / 1e9).to_list(), values.to_list(), color=colours.get(key[0]),
                linestyle=dashes.get(key[1], "-"), alpha=0.8, label=label if key not in labelled else None)  # fmt: skip
        labelled.add(key)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(axis_label(y))
    ax.set_title(title or f"{y} over time")
    ax.grid(alpha=0.3)
    if (hues or styles) and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return out


def _timeseries_files(runs: pl.DataFrame) -> list[Path]:
    """The readable timeseries.parquet of each run that has one."""
    if "run_dir" not in runs.columns:
        return []
    return [p for d in runs["run_dir"].to_list() if (p := local_path(d) / TIMESERIES).is_file() and not unreadable(p)]


def timeseries_without(runs: pl.DataFrame, y: str) -> list[Path]:
    """The runs' time series that lack a column of ``y`` (``a`` or ``a/b``): a metric some runs' plugins
    or settings do not record. ``--timeseries`` plots the others and lists these."""
    names = set(y.split("/"))
    return [p for p in _timeseries_files(runs) if not names <= set(read_parquet_schema(p))]


def _check_timeseries(runs: pl.DataFrame, y: str) -> None:
    """The columns of ``y`` (``a`` or ``a/b``) exist in some run's time series (the others are left out)."""
    paths = _timeseries_files(runs)
    if not paths:
        raise ReportError(f"--timeseries {y}: no run has a {TIMESERIES} (engine.timeseries=false?)")
    names = y.split("/")
    having = next((p for p in paths if set(names) <= set(read_parquet_schema(p))), None)
    columns = (
        sorted({c for p in paths for c in read_parquet_schema(p)})
        if having is None
        else list(read_parquet_schema(having))
    )
    for name in names:
        _check_columns_in(columns, name, "--timeseries", "in the time series")
    if having is None:
        raise ReportError(f"--timeseries {y}: no run's time series has all of {', '.join(names)}")
    schema = read_parquet_schema(having)
    text = [name for name in names if not schema[name].is_numeric()]
    if text:
        raise ReportError(f"--timeseries {y}: {text[0]} is not a number (a {schema[text[0]]} column); the plot "
                          "draws numbers")  # fmt: skip


def _baseline(runs: pl.DataFrame, baseline: str) -> tuple[str, str]:
    """``--baseline KEY=VALUE`` checked: the key is a column and some run has the value."""
    key, eq, value = baseline.partition("=")
    _check_columns(runs, [key], "--baseline")
    values = sorted(set(runs[key].cast(pl.String).to_list()))
    if not eq or not value:
        raise ReportError(f"--baseline {baseline}: give KEY=VALUE, the group to compare against, "
                          f"e.g. {key}={values[0]} (values: {', '.join(values)})")  # fmt: skip
    if value not in values:
        raise ReportError(f"--baseline {baseline}: no run has {key}={value}; values: {values}")
    return key, value


def _check_columns(frame: pl.DataFrame, names: list[str], option: str = "") -> None:
    for name in names:
        _check_columns_in(frame.columns, name, option, "in the results")


def _check_columns_in(columns: list[str], name: str, option: str, where: str) -> None:
    """``name`` is one of ``columns``, else a ReportError naming the closest."""
    if name in columns:
        return
    near = difflib.get_close_matches(name, columns, n=5, cutoff=0.5)
    if not near:  # a per-kind column, or a near miss of one part: compare by the part after the dot too
        near = [c for c in columns if c.rpartition(".")[2] == name.rpartition(".")[2]][:5]
    hint = f"; closest: {', '.join(near)}" if near else "; mmnsim-report --explain all lists the metrics"
    raise ReportError(f"{option + ': ' if option else ''}no column {name!r} {where}{hint}")


def _check_numeric(frame: pl.DataFrame, names: list[str], option: str, why: str) -> None:
    """Each of ``names`` is a column of numbers, else a ReportError saying which is not and why it must be."""
    text = [m for m in names if not frame[m].dtype.is_numeric()]
    if text:
        raise ReportError(f"{option}: {text[0]} is not a number (a {frame[text[0]].dtype} column); {why}")


def check_options(runs: pl.DataFrame, by: list[str], metrics: list[str], baseline: str | None = None,
                  plot_xy: Sequence[str] | None = None, timeseries: str | None = None,
                  hue: str | Sequence[str] | None = None) -> None:  # fmt: skip
    """Every column the options name exists, before any work is done (results written, tables, plots)."""
    _check_columns(runs, by, "--by")
    _check_columns(runs, metrics, "--metrics")
    _check_numeric(runs, metrics, "--metrics", "the table averages metrics")
    if baseline:
        _baseline(runs, baseline)
    if plot_xy:
        _check_columns(runs, list(plot_xy), "--plot")
        _check_numeric(runs, list(plot_xy[1:]), "--plot", "the plot draws the mean of Y")
    if hue and not plot_xy and not timeseries:
        raise ReportError(f"--hue {hue}: colours the lines of --plot or --timeseries, and does nothing without one "
                          "of them (the table groups runs by --by)")  # fmt: skip
    _check_columns(runs, _keys(hue), "--hue")
    if timeseries:
        _check_timeseries(runs, timeseries)


def write_results(runs: pl.DataFrame, out_dir: Path) -> None:
    """results.parquet and results.csv (lists and nested values as text), each whole or not at all
    (``output.write_bytes_atomic``): an OSError (read-only, full, not a directory) leaves no file behind."""
    write_atomic(runs, out_dir / "results.parquet")
    buffer = io.BytesIO()
    runs.write_csv(buffer)
    write_bytes_atomic(buffer.getbuffer(), out_dir / "results.csv")


def _unwritten(unwritten: list[tuple[str, OSError]], where: Path) -> str:
    """What could not be written in ``where``, and why, in one line."""
    what = ", ".join(w for w, _ in unwritten)
    reasons = ", ".join(dict.fromkeys(exc.strerror or str(exc).splitlines()[0] for _, exc in unwritten))
    return f"mmnsim-report: could not write {what} in {where} ({reasons}); --out DIR writes them elsewhere"


@console_script("mmnsim-report")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="mmnsim-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="multirun (or run) directories")
    parser.add_argument("--by", help="comma-separated keys to group by (default: the overrides that vary)")
    parser.add_argument("--metrics", help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)})")
    parser.add_argument("--baseline", help="KEY=VALUE: compare every group against this one")
    parser.add_argument("--plot", nargs=2, metavar=("X", "Y"), help="write Y against X as a PNG")
    parser.add_argument("--timeseries", metavar="Y", help="write Y per tick (a column, or a/b) as a PNG")
    parser.add_argument("--hue", help="comma-separated keys: each combination of their values is one colour")
    parser.add_argument("--out", type=Path, help="where results.parquet/csv and plots go (default: the first dir)")
    parser.add_argument(
        "--explain", metavar="NAME", help="what a metric means (unit, type, kernel counter); all: every one"
    )
    parser.add_argument("--metrics-doc", action="store_true", help="print docs/metrics.md (the built-in metrics)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        print(f"mmnsim-report: --out {args.out}: not a directory", file=sys.stderr)
        sys.exit(2)
    unwritten: list[tuple[str, OSError]] = []  # what could not be written, and why: one line at the end
    try:
        if args.explain or args.metrics_doc:
            print(_explain(args.explain) if args.explain else metrics_markdown(installed_catalogue(builtin_only=True)),
                  end="" if args.metrics_doc and not args.explain else "\n")  # fmt: skip
            return
        if not args.dirs:
            parser.error("give one or more directories (or --explain NAME)")
        problems: list[tuple[Path, str]] = []
        runs, varying, failed = load(args.dirs, problems)
        by = args.by.split(",") if args.by else [k for k in varying if k != "seed"]
        metrics = args.metrics.split(",") if args.metrics else [m for m in DEFAULT_METRICS if m in runs.columns]
        check_options(runs, by, metrics, args.baseline, args.plot, args.timeseries, args.hue)
        split = hidden_differences(runs, by)
        by += split
        out = args.out or args.dirs[0]
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_results(runs, out)
        except OSError as exc:  # a read-only sweep directory still gets its table
            unwritten.append(("results.parquet, results.csv", exc))
        if args.baseline:
            print(markdown_compare(compare(runs, by, metrics, args.baseline), args.baseline, metrics))
        else:
            print(markdown(summarize(runs, by, metrics), metrics))
        notes = [note for note in (time_note(runs, metrics), _split_note(split)) if note]
        if notes:
            print("\n" + "\n".join(notes))
        prov = runs.select(c for c in PROVENANCE if c in runs.columns and c != "config_hash").unique()
        print(f"\n{runs.height} runs; provenance: " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in r.items()) for r in prov.iter_rows(named=True)))  # fmt: skip
        if failed:
            print(f"{len(failed)} runs failed or did not finish (no summary.parquet):")
            for d in failed:
                record = d / FAILED
                reason = unreadable(record) if record.is_file() else None
                if reason:
                    problems.append((record, reason))
                    error = "failed (failed.json unreadable)"
                else:
                    error = json.loads(record.read_bytes())["error"] if record.is_file() else "did not finish"
                overrides = " ".join(f"{k}={v}" for k, v in _overrides(d).items() if k in by)
                print(f"  {d} ({overrides}): {error}")
        if args.timeseries:
            for d in runs["run_dir"].to_list():
                path = local_path(d) / TIMESERIES
                reason = unreadable(path) if path.is_file() else None
                if reason:
                    problems.append((path, f"{reason} (left out of the plot)"))
            lacking = timeseries_without(runs, args.timeseries)
            if lacking:
                print(f"{len(lacking)} runs' time series have no {args.timeseries}, left out of the plot:")
                for path in lacking:
                    print(f"  {path}")
        if problems:
            print(f"{len(problems)} files unreadable:")
            for path, reason in problems:
                print(f"  {path}: {reason}")
        try:
            if args.plot:
                x, y = args.plot
                print(f"plot: {plot(runs, x, y, args.hue, out / plot_name(y, x, args.hue))}")
            if args.timeseries:
                target = out / plot_name(args.timeseries, None, args.hue)
                print(f"plot: {plot_timeseries(runs, args.timeseries, args.hue, target)}")
        except OSError as exc:
            unwritten.append(("the plot", exc))
    except (ReportError, MetricError) as exc:
        print(f"mmnsim-report: {exc}", file=sys.stderr)
        sys.exit(2)
    if unwritten:
        print(_unwritten(unwritten, out), file=sys.stderr)
    if unwritten and (args.plot or args.timeseries):
        sys.exit(1)  # a plot asked for was not written


def _split_note(split: list[str]) -> str:
    if not split:
        return ""
    return (f"split by {', '.join(split)} too: runs of one group differed in them (runs of other code, or settings "
            "--by does not name), and are not averaged together")  # fmt: skip


def _explain(name: str) -> str:
    cat = installed_catalogue()
    if name == "all":
        return "\n\n".join(cat.explain(n) for n in cat.metrics)
    return cat.explain(name)


if __name__ == "__main__":
    main()
