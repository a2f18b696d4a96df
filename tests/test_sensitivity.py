"""The sensitivity analysis (framework/sensitivity.py): its design, its headline ratios and its verdicts.
The full run is `mmnsim-experiment NAME --sensitivity` (minutes); these check its parts on small inputs."""

from pathlib import Path

import polars as pl
import yaml

from mmnsim.sensitivity import Outcome, Point, _write_points, cases, design, flips, headlines, verdict

SPEC = {
    "headlines": [
        {"metric": "sim_time_ns", "numerator": {"secondary.mode": "notifier"},
         "denominator": {"secondary.mode": "pin"}, "claim": "below", "threshold": 1.0},
        {"metric": "sim_time_ns", "numerator": {"secondary.mode": "notifier"},
         "denominator": {"secondary.mode": "pin", "policies.eager_release.every_ticks": 1}, "claim": "below"},
    ],
    "overrides": ["workload.accesses=1000"],
}  # fmt: skip


def test_design_moves_every_cost_with_a_range_to_each_end():
    points, defaults = design("release_cost", SPEC)
    assert points[0] == Point("p00", None, None, "default")
    assert defaults["secondary.fault_ns"] == 1000 and "costs.walk_ref_ns" in defaults
    fault = [p for p in points if p.key == "secondary.fault_ns"]
    assert [(p.end, p.value) for p in fault] == [("low", 500), ("high", 7000)]
    assert len(points) == 2 * len(defaults) + 1


def test_each_point_file_sets_its_case_and_its_cost(tmp_path: Path):
    compared = cases(SPEC)
    assert len(compared) == 3  # notifier, pin, pin releasing every tick: each once
    names = _write_points([Point("p00", None, None, "default"), Point("p01", "secondary.fault_ns", 500, "low")],
                          compared, tmp_path)  # fmt: skip
    assert names == ["p00c0", "p00c1", "p00c2", "p01c0", "p01c1", "p01c2"]
    body = yaml.safe_load((tmp_path / "sensitivity_point" / "p01c2.yaml").read_text())
    assert body == {"secondary": {"mode": "pin", "fault_ns": 500}, "policies": {"eager_release": {"every_ticks": 1}}}


def test_headline_is_the_ratio_of_seed_means():
    runs = pl.DataFrame({"sensitivity_point": ["p00c0", "p00c0", "p00c1", "p00c1"],
                         "sim_time_ns": [1.0, 3.0, 4.0, 4.0]})  # fmt: skip
    at = headlines(runs, SPEC["headlines"][0], [Point("p00", None, None, "default")], cases(SPEC))
    assert at == {"p00": 0.5}


def test_verdict_holds_or_names_where_it_flips():
    h = SPEC["headlines"][0]
    steady = [Outcome("costs.access_ns", 70, 140, 80, 0.55, 0.65)]
    assert verdict(h, 0.6, steady).startswith("**Holds for all costs in their ranges**")
    # fault 1000 ns gives 0.6; at 7000 ns 1.8: the ratio crosses 1 a third of the way, at 3000 ns
    flipping = [Outcome("secondary.fault_ns", 500, 7000, 1000, 0.3, 1.8)]
    assert flips(h, 0.6, flipping) == ["reverses when `secondary.fault_ns` > 3,000 (headline 1.8 at 7,000)"]
    assert "reverses when" in verdict(h, 0.6, flipping)
    assert verdict(h, 1.2, [Outcome("costs.access_ns", 70, 140, 80, 1.1, 1.3)]).startswith(
        "**Does not hold for any cost in its range**"
    )
    # fails at the defaults (1.2), holds at the low end: where it starts to hold
    back = [Outcome("secondary.fault_ns", 500, 7000, 1000, 0.8, 2.0)]
    assert flips(h, 1.2, back) == ["holds when `secondary.fault_ns` < 750 (headline 0.8 at 500)"]
