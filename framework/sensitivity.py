"""``mmnsim-experiment NAME --sensitivity``: how far an experiment's answer depends on the assumed costs.

A one-at-a-time design around the defaults: every cost of the experiment's composed config that has a
range (``mmnsim-costs``) is set to its low and to its high end, the others staying at their defaults,
plus the all-defaults point. Each design point is a config file ``sensitivity_point/pNN.yaml`` in the
design folder (added to Hydra's search path through ``MMNSIM_CONF_PATH``), so the whole design runs as one
Hydra multirun: ``+sensitivity_point=p00c0,...`` (each point once per setting a headline compares, the
experiment's own sweep replaced) times the seeds.

The experiment's ``sensitivity:`` section (``conf/experiment/NAME.yaml``) defines the headline:

    sensitivity:
      headlines:                            # the first one gets the tornado plot
        - metric: sim_time_ns               # a summary column
          numerator: {secondary.mode: notifier, policies.eager_release.every_ticks: 0}
          denominator: {secondary.mode: pin, policies.eager_release.every_ticks: 1}
          claim: below                      # the answer says the ratio is below `threshold` (or: above)
          threshold: 1.0
          statement: "notifier mode does the work sooner than a pinning KVM releasing every tick"
      seeds: [0, 1]
      overrides: [workload.accesses=2000000]   # reduced sizes, said in the report
      costs: [...]                         # optional: only these keys (default: every cost with a range)

Each headline is the mean of ``metric`` over the numerator's runs (seeds) divided by its mean over the
denominator's. For each cost the report gives the headline at its low and high end, sorted by swing (a
tornado plot), the headline's range over the design, and whether the claim holds at every point; where
it does not, the value at which it flips, interpolated linearly between the default and that end.
This is a screening design: it shows one cost at a time, not interactions.
"""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from .discovery import CONF_PATH_ENV
from .report import ReportError, load, write_results
from .sources import compose_checked, costs_of, number

POINT_GROUP = "sensitivity_point"
README_BEGIN = "<!-- sensitivity: written by mmnsim-experiment --sensitivity -->"
README_END = "<!-- end of sensitivity -->"


@dataclass
class Point:
    name: str  # pNN
    key: str | None  # the cost moved (None: the defaults)
    value: float | None
    end: str  # "low", "high" or "default"


@dataclass
class Outcome:
    key: str
    low: float
    high: float
    default: float
    at_low: float
    at_high: float

    @property
    def swing(self) -> float:
        return abs(self.at_high - self.at_low)


def design(name: str, spec: dict) -> tuple[list[Point], dict[str, float]]:
    """The design points and the defaults of the varied costs."""
    cfg = compose_checked([f"+experiment={name}", *spec.get("overrides", [])])
    wanted = spec.get("costs")
    costs = [c for c in costs_of(cfg) if c.low is not None and c.low < c.high and (not wanted or c.key in wanted)]
    if wanted and (missing := set(wanted) - {c.key for c in costs}):
        raise ReportError(f"sensitivity.costs: {sorted(missing)} have no range in the composed config")
    points = [Point("p00", None, None, "default")]
    for c in costs:
        for end, value in (("low", c.low), ("high", c.high)):
            points.append(Point(f"p{len(points):02d}", c.key, value, end))
    return points, {c.key: c.value for c in costs}


def cases(spec: dict) -> list[dict]:
    """The settings the headlines compare (each numerator and denominator), once each."""
    out: list[dict] = []
    for h in spec["headlines"]:
        for side in (h["numerator"], h["denominator"]):
            if side not in out:
                out.append(side)
    return out


def _write_points(points: list[Point], runs: list[dict], folder: Path) -> list[str]:
    """One config file per design point and case: the case's settings and the point's cost."""
    group = folder / POINT_GROUP
    group.mkdir(parents=True, exist_ok=True)
    names = []
    for p in points:
        for i, case in enumerate(runs):
            settings = {**case, **({p.key: p.value} if p.key else {})}
            nested: dict = {}
            for key, value in settings.items():
                *parents, leaf = key.split(".")
                node = nested
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = value
            body = yaml.safe_dump(nested, default_flow_style=True, width=1000).strip()
            (group / f"{p.name}c{i}.yaml").write_text(f"# @package _global_\n{body}\n")
            names.append(f"{p.name}c{i}")
    return names


def run(name: str, spec: dict, out: Path, report_only: bool, extra: list[str]) -> None:
    runs_dir = Path("multirun") / f"sensitivity-{name}"
    points, defaults = design(name, spec)
    started = time.monotonic()
    if not report_only:
        shutil.rmtree(runs_dir, ignore_errors=True)
        names = _write_points(points, cases(spec), runs_dir / "design")
        exe = Path(sys.executable).with_name("mmnsim")
        # The experiment's own sweep is replaced: the design points carry the cases the headlines compare.
        seeds = ",".join(map(str, spec.get("seeds", [0, 1])))
        points_arg = f"+{POINT_GROUP}={','.join(names)}"
        command = [str(exe), "-m", f"+experiment={name}", "hydra.sweeper.params=null", points_arg, f"seed={seeds}",
                   *spec.get("overrides", []), f"hydra.sweep.dir={runs_dir / 'runs'}", *extra]  # fmt: skip
        print("running:", *command[1:4], f"+{POINT_GROUP}=({len(names)} design points)", *command[5:], flush=True)
        env = {**os.environ, CONF_PATH_ENV: str((runs_dir / "design").resolve())}
        if subprocess.run(command, env=env).returncode != 0:
            print(f"mmnsim-experiment: some sensitivity runs of {name} failed; reporting the others", file=sys.stderr)
    timing = runs_dir / "elapsed_seconds"  # kept for --report-only
    if not report_only:
        timing.write_text(f"{time.monotonic() - started:.1f}\n")
    elapsed = float(timing.read_text()) if timing.is_file() else None
    runs, _, failed = load([runs_dir / "runs"])
    write_results(runs, runs_dir / "runs")
    out.mkdir(parents=True, exist_ok=True)
    sections, verdicts = [], []
    for i, h in enumerate(spec["headlines"]):
        at = headlines(runs, h, points, cases(spec))
        outcomes = sorted((Outcome(key, _end(points, key, "low").value, _end(points, key, "high").value, value,
                                   at[_end(points, key, "low").name], at[_end(points, key, "high").name])
                           for key, value in defaults.items()), key=lambda o: -o.swing)  # fmt: skip
        sections.append(section(h, at["p00"], outcomes))
        verdicts.append(f"{h.get('statement', h['metric'])}: {verdict(h, at['p00'], outcomes)}")
        if i == 0:
            tornado(h, at["p00"], outcomes, out / "tornado.png")
    text = header(name, spec, len(defaults), len(runs), failed, elapsed)
    text += "![tornado: the first headline](tornado.png)\n\n" + "".join(sections)
    (out / "sensitivity.md").write_text(text)
    _update_readme(out / "README.md", " ".join(f"{v}" for v in verdicts))
    print(text)
    print(f"plot: {out / 'tornado.png'}")


def _end(points: list[Point], key: str, end: str) -> Point:
    return next(p for p in points if p.key == key and p.end == end)


def headlines(runs: pl.DataFrame, spec: dict, points: list[Point], compared: list[dict]) -> dict[str, float]:
    """The headline ratio at each design point (means over the seeds)."""
    metric = spec["metric"]
    if metric not in runs.columns:
        raise ReportError(f"sensitivity.metric: no column {metric!r} in the runs")
    out = {}
    for p in points:
        num = _mean(runs, f"{p.name}c{compared.index(spec['numerator'])}", metric)
        den = _mean(runs, f"{p.name}c{compared.index(spec['denominator'])}", metric)
        if num is None or den is None:
            raise ReportError(f"sensitivity: design point {p.name} ({p.key}) has no runs for the numerator or "
                              "denominator; did its jobs fail?")  # fmt: skip
        out[p.name] = num / den if den else float("inf")
    return out


def _mean(runs: pl.DataFrame, point: str, metric: str) -> float | None:
    runs = runs.filter(pl.col(POINT_GROUP).cast(pl.String) == point)
    return None if runs.is_empty() else float(runs[metric].cast(pl.Float64).mean())


def holds(spec: dict, value: float) -> bool:
    threshold = float(spec.get("threshold", 1.0))
    return value < threshold if spec.get("claim", "below") == "below" else value > threshold


def flips(spec: dict, base: float, outcomes: list[Outcome]) -> list[str]:
    """Where the claim's truth differs from the defaults': 'reverses when KEY < X' (or, when it fails at the
    defaults, 'holds when KEY > X'), X interpolated linearly between the default (headline ``base``) and
    the end of the range where it changed."""
    threshold = float(spec.get("threshold", 1.0))
    verb = "reverses" if holds(spec, base) else "holds"
    out = []
    for o in outcomes:
        for end, value, at in (("low", o.low, o.at_low), ("high", o.high, o.at_high)):
            if holds(spec, at) == holds(spec, base):
                continue
            x = value if at == base else o.default + (threshold - base) * (value - o.default) / (at - base)
            out.append(f"{verb} when `{o.key}` {'<' if end == 'low' else '>'} {number(float(f'{x:.3g}'))} "
                       f"(headline {at:.3g} at {number(value)})")  # fmt: skip
    return out


def verdict(spec: dict, base: float, outcomes: list[Outcome]) -> str:
    values = [base, *(o.at_low for o in outcomes), *(o.at_high for o in outcomes)]
    where = flips(spec, base, outcomes)
    span = (f"headline {spec['metric']} ratio {base:.3g} at the defaults, {min(values):.3g} to {max(values):.3g} "
            "over the design")  # fmt: skip
    top = ", ".join(f"`{o.key}`" for o in outcomes[:3])
    if holds(spec, base):
        if not where:
            return f"**Holds for all costs in their ranges** ({span}); most sensitive to {top}."
        return f"**Holds at the defaults but {'; '.join(where)}** ({span})."
    if not where:
        return f"**Does not hold for any cost in its range** ({span}); most sensitive to {top}."
    return f"**Does not hold at the defaults; {'; '.join(where)}** ({span})."


def header(name: str, spec: dict, costs: int, runs: int, failed: list, elapsed: float | None) -> str:
    lines = [
        f"# Sensitivity of the {name} answer to the costs",
        "",
        f"Written by `mmnsim-experiment {name} --sensitivity`. Design: one cost at a time at the low and the "
        f"high end of its range (`mmnsim-costs`), the others at their defaults; {costs} costs, "
        f"{2 * costs + 1} points, seeds {spec.get('seeds', [0, 1])}, {runs} runs"
        + (f", {len(failed)} failed" if failed else "")
        + (f", {elapsed / 60:.1f} min on this machine, shared with other jobs" if elapsed is not None else "")
        + ". Reduced sizes: "
        + (", ".join(f"`{o}`" for o in spec.get("overrides", [])) or "none")
        + (f" ({spec['note']})" if spec.get("note") else "")
        + ". A screening design: it shows each cost alone, not their interactions.",
        "",
    ]
    return "\n".join(lines) + "\n"


def section(h: dict, base: float, outcomes: list[Outcome]) -> str:
    ratio = f"{h['metric']}[{_where(h['numerator'])}] / {h['metric']}[{_where(h['denominator'])}]"
    lines = [
        f"## {h.get('statement', h['metric'])}",
        "",
        f"Headline: {ratio}; the answer says it is {h.get('claim', 'below')} {h.get('threshold', 1.0)}. "
        f"At the defaults: {base:.4g}.",
        "",
        verdict(h, base, outcomes),
        "",
        "| cost | default | low | high | headline at low | headline at high | swing | claim holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        ok = "yes" if holds(h, o.at_low) and holds(h, o.at_high) else "**no**"
        lines.append(f"| `{o.key}` | {number(o.default)} | {number(o.low)} | {number(o.high)} | {o.at_low:.4g} | "
                     f"{o.at_high:.4g} | {o.swing:.3g} | {ok} |")  # fmt: skip
    return "\n".join(lines) + "\n\n"


def _where(where: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in where.items())


def tornado(spec: dict, base: float, outcomes: list[Outcome], target: Path, top: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = outcomes[:top][::-1]  # the largest swing on top
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.6))
    for i, o in enumerate(shown):
        ax.barh(i, o.at_low - base, left=base, color="tab:blue", label="cost at its low end" if i == 0 else None)
        ax.barh(i, o.at_high - base, left=base, color="tab:orange", label="cost at its high end" if i == 0 else None)
    ax.set_yticks(range(len(shown)), [f"{o.key} [{number(o.low)}, {number(o.high)}]" for o in shown], fontsize=8)
    ax.axvline(base, color="black", linewidth=1)
    ax.axvline(float(spec.get("threshold", 1.0)), color="red", linestyle="--", linewidth=1, label="claim flips")
    ax.set_xlabel(f"headline: {spec['metric']} ratio\n{_where(spec['numerator'])}\nover {_where(spec['denominator'])}",
                  fontsize=8)  # fmt: skip
    ax.set_title(f"Costs that move the answer most (defaults: {base:.3g})", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _update_readme(readme: Path, line: str) -> None:
    """Put the verdict between the sensitivity markers of the experiment's README.md, if it has them."""
    if not readme.is_file():
        return
    text = readme.read_text()
    head, begin, rest = text.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if begin and end:
        readme.write_text(
            f"{head}{README_BEGIN}\n{line} Details: [sensitivity.md](sensitivity.md).\n{README_END}{tail}"
        )
