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

      link: {secondary: [processes.0.secondary]}   # optional: copies that move with a varied cost

Each headline is the mean of ``metric`` over the numerator's runs (seeds) divided by its mean over the
denominator's. A headline with ``case:`` instead of a numerator and a denominator is a level: the mean
of ``metric`` over that case's runs itself (e.g. a share of time stalled), claimed above or below
``threshold``. A ratio whose denominator is 0 (pin mode completes 0 accesses) is infinite (0/0 is
undefined), and the report says at how many points; an infinite ratio is above any threshold, an
undefined one holds no claim, and neither is interpolated nor plotted.

For each cost the report gives the headline at its low and high end, sorted by swing (a tornado plot of
the first headline that some cost moves), the headline's range over the design, and whether the claim
holds at every point; where it does not, the value at which it flips, interpolated linearly between the
default and that end. When no cost moves a headline the report says so, and lists the costs it varied,
instead of a table of zero swings.

``link`` is for settings that hold their own copy of a cost: another tenant's secondary MMU
(``processes[i].secondary``) gets its defaults from the plugin's file, not from ``secondary``, so without
a link varying ``secondary.fault_ns`` would move one guest's KVM and leave the other's at the default.
With ``link: {secondary: [processes.0.secondary]}`` a point that sets ``secondary.fault_ns`` also sets
``processes.0.secondary.fault_ns``. (``guest.count`` guests share ``secondary`` and need no link.) A key
through a list (``processes.0...``, ``guest.devices.0...``, in a case or a link) writes that whole list,
as composed, with the one value changed: a config file cannot merge into one item of a list.

This is a screening design: it shows one cost at a time, not interactions.
"""

import copy
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml
from omegaconf import OmegaConf

from .discovery import CONF_PATH_ENV
from .output import write_bytes_atomic
from .report import ReportError, load, save_figure, write_results
from .sources import compose_checked, costs_of, number
from .sweeplock import SweepLock, holding

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
        """How far the cost moves the headline: infinite when one end is infinite and the other not."""
        if self.at_high == self.at_low:
            return 0.0
        return abs(self.at_high - self.at_low) if _finite(self.at_high, self.at_low) else math.inf


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def fmt(value: float, digits: int = 3) -> str:
    """A headline value as the report prints it; 0/0 is undefined, not a number."""
    return "undefined (0/0)" if math.isnan(value) else f"{value:.{digits}g}"


def sides(headline: dict) -> list[dict]:
    """The cases a headline reads: its numerator and denominator, or the one case of a level."""
    if "case" in headline:
        return [headline["case"]]
    return [headline["numerator"], headline["denominator"]]


def ratio(num: float, den: float) -> float:
    """num / den; infinite when only the denominator is 0, undefined (nan) when both are."""
    if den:
        return num / den
    return math.nan if num == 0 else math.copysign(math.inf, num)


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
        for side in sides(h):
            if side not in out:
                out.append(side)
    return out


def linked(key: str, links: dict[str, list[str]] | None) -> list[str]:
    """The copies of a varied cost that move with it (``link``): secondary.fault_ns with
    {secondary: [processes.0.secondary]} gives processes.0.secondary.fault_ns."""
    return [f"{target}{key[len(prefix):]}" for prefix, targets in (links or {}).items()
            if key.startswith(f"{prefix}.") for target in targets]  # fmt: skip


def nest(settings: dict, base: dict | None = None) -> dict:
    """Dotted keys as a config tree. A numeric part is a list index: the list is taken whole from ``base``
    (the composed config) and the one value set in it, since a config file replaces a list, not an item."""
    nested: dict = {}
    for key, value in settings.items():
        parts = key.split(".")
        node, seen = nested, base
        for i, (part, after) in enumerate(zip(parts, parts[1:], strict=False)):
            seen = _child(seen, part)
            if isinstance(node, list):
                node = node[int(part)]
                continue
            if part not in node:
                if after.isdigit() and not isinstance(seen, list):
                    raise ReportError(f"sensitivity: {key}: no list at {'.'.join(parts[: i + 1])} in the composed "
                                      "config")  # fmt: skip
                node[part] = copy.deepcopy(seen) if after.isdigit() else {}
            node = node[part]
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return nested


def _child(node, part: str):
    if isinstance(node, list):
        return node[int(part)] if part.isdigit() and int(part) < len(node) else None
    return node.get(part) if isinstance(node, dict) else None


def _write_points(points: list[Point], runs: list[dict], folder: Path, links: dict | None = None,
                  base: dict | None = None) -> list[str]:  # fmt: skip
    """One config file per design point and case: the case's settings, the point's cost and its links."""
    group = folder / POINT_GROUP
    group.mkdir(parents=True, exist_ok=True)
    names = []
    for p in points:
        for i, case in enumerate(runs):
            moved = {p.key: p.value, **{k: p.value for k in linked(p.key, links)}} if p.key else {}
            body = yaml.safe_dump(nest({**case, **moved}, base), default_flow_style=True, width=1000).strip()
            write_bytes_atomic(f"# @package _global_\n{body}\n".encode(), group / f"{p.name}c{i}.yaml")
            names.append(f"{p.name}c{i}")
    return names


def run(name: str, spec: dict, out: Path, report_only: bool, extra: list[str]) -> None:
    runs_dir = Path("multirun") / f"sensitivity-{name}"
    if report_only and not (runs_dir / "runs").is_dir():
        raise ReportError(f"nothing to report: no runs in {runs_dir / 'runs'} (run without --report-only first)")
    points, defaults = design(name, spec)
    timing = runs_dir / "elapsed_seconds"  # kept for --report-only
    with holding(runs_dir / "runs") as lock:  # held from clearing the last runs to the report
        if not report_only:
            started = time.monotonic()
            _run_design(name, spec, extra, runs_dir, points, lock)
            write_bytes_atomic(f"{time.monotonic() - started:.1f}\n".encode(), timing)
        elapsed = float(timing.read_text()) if timing.is_file() else None
        _report(name, spec, out, runs_dir, points, defaults, elapsed)


def _run_design(name: str, spec: dict, extra: list[str], runs_dir: Path, points: list[Point], lock: SweepLock) -> None:
    """Replace the last runs and their design by this design's, as one Hydra multirun handed ``lock``."""
    lock.clear()  # only this process, holding the lock, removes the last runs and their design
    shutil.rmtree(runs_dir / "design", ignore_errors=True)
    base = OmegaConf.to_container(compose_checked([f"+experiment={name}", *spec.get("overrides", [])]), resolve=True)
    names = _write_points(points, cases(spec), runs_dir / "design", spec.get("link"), base)
    exe = Path(sys.executable).with_name("mmnsim")
    # The experiment's own sweep is replaced: the design points carry the cases the headlines compare.
    seeds = ",".join(map(str, spec.get("seeds", [0, 1])))
    points_arg = f"+{POINT_GROUP}={','.join(names)}"
    command = [str(exe), "-m", f"+experiment={name}", "hydra.sweeper.params=null", points_arg, f"seed={seeds}",
               *spec.get("overrides", []), f"hydra.sweep.dir={runs_dir / 'runs'}", *extra]  # fmt: skip
    print("running:", *command[1:4], f"+{POINT_GROUP}=({len(names)} design points)", *command[5:], flush=True)
    env = {**os.environ, CONF_PATH_ENV: str((runs_dir / "design").resolve())}
    if lock.run_sweep(command, env) != 0:
        print(f"mmnsim-experiment: some sensitivity runs of {name} failed; reporting the others", file=sys.stderr)


def _report(name: str, spec: dict, out: Path, runs_dir: Path, points: list[Point], defaults: dict[str, float],
            elapsed: float | None) -> None:  # fmt: skip
    """sensitivity.md, tornado.png and the README's verdict, from the runs in ``runs_dir``."""
    runs, _, failed = load([runs_dir / "runs"])
    write_results(runs, runs_dir / "runs")
    out.mkdir(parents=True, exist_ok=True)
    sections, verdicts, plotted = [], [], None
    for h in spec["headlines"]:
        at = headlines(runs, h, points, cases(spec))
        outcomes = sorted((Outcome(key, _end(points, key, "low").value, _end(points, key, "high").value, value,
                                   at[_end(points, key, "low").name], at[_end(points, key, "high").name])
                           for key, value in defaults.items()), key=lambda o: -o.swing)  # fmt: skip
        sections.append(section(h, at["p00"], outcomes))
        verdicts.append(f"{h.get('statement', h['metric'])}: {verdict(h, at['p00'], outcomes)}")
        if plotted is None and tornado(h, at["p00"], outcomes, out / "tornado.png"):
            plotted = h.get("statement", h["metric"])
    text = header(name, spec, len(defaults), len(runs), failed, elapsed)
    if plotted:
        text += f"![tornado: {plotted}](tornado.png)\n\n"
    else:
        (out / "tornado.png").unlink(missing_ok=True)
        text += "No tornado plot: no cost in its range moves a finite headline.\n\n"
    text += "".join(sections)
    write_bytes_atomic(text.encode(), out / "sensitivity.md")
    _update_readme(out / "README.md", " ".join(f"{v}" for v in verdicts))
    print(text)
    if plotted:
        print(f"plot: {out / 'tornado.png'}")


def _end(points: list[Point], key: str, end: str) -> Point:
    return next(p for p in points if p.key == key and p.end == end)


def headlines(runs: pl.DataFrame, spec: dict, points: list[Point], compared: list[dict]) -> dict[str, float]:
    """The headline at each design point (means over the seeds): a ratio, or a level for ``case:``."""
    metric = spec["metric"]
    if metric not in runs.columns:
        raise ReportError(f"sensitivity.metric: no column {metric!r} in the runs")
    out = {}
    for p in points:
        means = [_mean(runs, f"{p.name}c{compared.index(side)}", metric) for side in sides(spec)]
        if None in means:
            raise ReportError(f"sensitivity: design point {p.name} ({p.key}) has no runs for the numerator or "
                              "denominator; did its jobs fail?")  # fmt: skip
        out[p.name] = means[0] if len(means) == 1 else ratio(*means)
    return out


def _mean(runs: pl.DataFrame, point: str, metric: str) -> float | None:
    runs = runs.filter(pl.col(POINT_GROUP).cast(pl.String) == point)
    return None if runs.is_empty() else float(runs[metric].cast(pl.Float64).mean())


def holds(spec: dict, value: float) -> bool:
    """The claim at one point; an undefined (0/0) headline supports no claim."""
    threshold = float(spec.get("threshold", 1.0))
    return value < threshold if spec.get("claim", "below") == "below" else value > threshold


def flips(spec: dict, base: float, outcomes: list[Outcome]) -> list[str]:
    """Where the claim's truth differs from the defaults': 'reverses when KEY < X' (or, when it fails at the
    defaults, 'holds when KEY > X'), X interpolated linearly between the default (headline ``base``) and
    the end of the range where it changed; through an infinite or undefined headline there is no line, so
    the end itself is named."""
    threshold = float(spec.get("threshold", 1.0))
    verb = "reverses" if holds(spec, base) else "holds"
    out = []
    for o in outcomes:
        for end, value, at in (("low", o.low, o.at_low), ("high", o.high, o.at_high)):
            if holds(spec, at) == holds(spec, base):
                continue
            if not _finite(base, at):
                out.append(f"{verb} with `{o.key}` at its {end} end, {number(value)} (headline {fmt(at)})")
                continue
            x = value if at == base else o.default + (threshold - base) * (value - o.default) / (at - base)
            out.append(f"{verb} when `{o.key}` {'<' if end == 'low' else '>'} {number(float(f'{x:.3g}'))} "
                       f"(headline {fmt(at)} at {number(value)})")  # fmt: skip
    return out


def _values(base: float, outcomes: list[Outcome]) -> list[float]:
    return [base, *(o.at_low for o in outcomes), *(o.at_high for o in outcomes)]


def unmoved(base: float, outcomes: list[Outcome]) -> bool:
    """No cost in its range moves the headline: the same value at every point (infinite ones included)."""
    return all(v == base or (math.isnan(v) and math.isnan(base)) for v in _values(base, outcomes))


def _span(spec: dict, base: float, outcomes: list[Outcome]) -> str:
    kind = f"{spec['metric']} ratio" if "case" not in spec else spec["metric"]
    values = _values(base, outcomes)
    if unmoved(base, outcomes):
        return f"headline {kind} {fmt(base, 4)} at every point"
    finite = [v for v in values if math.isfinite(v)]
    span = f"headline {kind} {fmt(base, 4)} at the defaults"
    if finite:
        span += f", {fmt(min(finite), 4)} to {fmt(max(finite), 4)} over the design"
    if odd := len(values) - len(finite):
        span += f", infinite or undefined at {odd} of {len(values)} points (a denominator of 0)"
    return span


def verdict(spec: dict, base: float, outcomes: list[Outcome]) -> str:
    where = flips(spec, base, outcomes)
    span = _span(spec, base, outcomes)
    if unmoved(base, outcomes):
        state = "Holds" if holds(spec, base) else "Does not hold"
        return f"**{state} for all costs in their ranges: no cost in its range moves it** ({span})."
    top = ", ".join(f"`{o.key}`" for o in outcomes[:3] if o.swing)
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
        + (f". Linked copies of the costs: {_links(spec['link'])}" if spec.get("link") else "")
        + ". A screening design: it shows each cost alone, not their interactions.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _links(links: dict) -> str:
    return "; ".join(f"`{k}.*` also sets {', '.join(f'`{t}.*`' for t in v)}" for k, v in links.items())


def section(h: dict, base: float, outcomes: list[Outcome]) -> str:
    if "case" in h:
        what = f"mean {h['metric']} over [{_where(h['case'])}]"
    else:
        what = f"{h['metric']}[{_where(h['numerator'])}] / {h['metric']}[{_where(h['denominator'])}]"
    lines = [
        f"## {h.get('statement', h['metric'])}",
        "",
        f"Headline: {what}; the answer says it is {h.get('claim', 'below')} {h.get('threshold', 1.0)}. "
        f"At the defaults: {fmt(base, 4)}.",
        "",
        verdict(h, base, outcomes),
        "",
    ]
    if any(not _finite(o.at_low, o.at_high) for o in outcomes) or not _finite(base):
        lines += ["`inf`: the denominator's mean is 0 at that point (e.g. the compared case completed none), so the "
                  "ratio is infinite: above any threshold, below none; `undefined (0/0)`: both are 0.", ""]  # fmt: skip
    if unmoved(base, outcomes):
        lines += [f"Costs varied, none of which moves it: {', '.join(f'`{o.key}`' for o in outcomes)}.", ""]
        return "\n".join(lines) + "\n"
    lines += [
        "| cost | default | low | high | headline at low | headline at high | swing | claim holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        ok = "yes" if holds(h, o.at_low) and holds(h, o.at_high) else "**no**"
        lines.append(f"| `{o.key}` | {number(o.default)} | {number(o.low)} | {number(o.high)} | {fmt(o.at_low, 4)} | "
                     f"{fmt(o.at_high, 4)} | {fmt(o.swing)} | {ok} |")  # fmt: skip
    return "\n".join(lines) + "\n\n"


def _where(where: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in where.items())


def tornado(spec: dict, base: float, outcomes: list[Outcome], target: Path, top: int = 12) -> bool:
    """Plot the costs that move the headline most; False (no plot) when none moves a finite headline."""
    shown = [o for o in outcomes if o.swing and _finite(base, o.at_low, o.at_high)][:top][::-1]  # largest on top
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.6))
    for i, o in enumerate(shown):
        ax.barh(i, o.at_low - base, left=base, color="tab:blue", label="cost at its low end" if i == 0 else None)
        ax.barh(i, o.at_high - base, left=base, color="tab:orange", label="cost at its high end" if i == 0 else None)
    ax.set_yticks(range(len(shown)), [f"{o.key} [{number(o.low)}, {number(o.high)}]" for o in shown], fontsize=8)
    ax.axvline(base, color="black", linewidth=1)
    ax.axvline(float(spec.get("threshold", 1.0)), color="red", linestyle="--", linewidth=1, label="claim flips")
    if "case" in spec:
        label = f"headline: {spec['metric']}\n{_where(spec['case'])}"
    else:
        label = f"headline: {spec['metric']} ratio\n{_where(spec['numerator'])}\nover {_where(spec['denominator'])}"
    ax.set_xlabel(label, fontsize=8)
    ax.set_title(f"Costs that move the answer most (defaults: {base:.3g})", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, target)
    return True


def _update_readme(readme: Path, line: str) -> None:
    """Put the verdict between the sensitivity markers of the experiment's README.md, if it has them."""
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    head, begin, rest = text.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if begin and end:
        new = f"{head}{README_BEGIN}\n{line} Details: [sensitivity.md](sensitivity.md).\n{README_END}{tail}"
        write_bytes_atomic(new.encode(), readme)
