"""The sensitivity analysis (framework/sensitivity.py): its design, its headline ratios and its verdicts.
The full run is `mmnsim-experiment NAME --sensitivity` (minutes); these check its parts on small inputs."""

import math
from pathlib import Path

import polars as pl
import yaml

from mmnsim.sensitivity import (
    Outcome,
    Point,
    _write_points,
    cases,
    design,
    flips,
    headlines,
    section,
    tornado,
    verdict,
)

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
    assert [(p.end, p.value) for p in fault] == [("low", 500), ("high", 22000)]
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


def test_level_headline_is_the_mean_of_its_case_against_a_threshold():
    level = {"metric": "stall_fraction", "case": {"secondary.mode": "notifier"}, "claim": "above", "threshold": 0.9}
    spec = {"headlines": [level]}
    assert cases(spec) == [{"secondary.mode": "notifier"}]
    runs = pl.DataFrame({"sensitivity_point": ["p00c0", "p00c0", "p01c0", "p01c0"],
                         "stall_fraction": [0.99, 0.97, 0.5, 0.7]})  # fmt: skip
    points = [Point("p00", None, None, "default"), Point("p01", "secondary.fault_ns", 100, "low")]
    at = headlines(runs, level, points, cases(spec))
    assert at == {"p00": 0.98, "p01": 0.6}
    outcomes = [Outcome("secondary.fault_ns", 100, 3000, 1000, 0.6, 0.99)]
    assert flips(level, 0.98, outcomes)[0].startswith("reverses when `secondary.fault_ns` < ")
    assert "mean stall_fraction over [secondary.mode=notifier]" in section(level, 0.98, outcomes)


def test_a_zero_denominator_gives_an_infinite_ratio_that_is_reported_not_a_crash(tmp_path: Path):
    h = SPEC["headlines"][0] | {"metric": "accesses", "claim": "above"}
    runs = pl.DataFrame({"sensitivity_point": ["p00c0", "p00c1", "p01c0", "p01c1", "p02c0", "p02c1"],
                         "accesses": [5, 0, 0, 0, 5, 2]})  # fmt: skip
    points = [Point("p00", None, None, "default"), Point("p01", "costs.access_ns", 70, "low"),
              Point("p02", "costs.access_ns", 140, "high")]  # fmt: skip
    at = headlines(runs, h, points, cases(SPEC))
    assert at["p00"] == math.inf and math.isnan(at["p01"]) and at["p02"] == 2.5  # 5/0, 0/0, 5/2
    outcomes = [Outcome("costs.access_ns", 70, 140, 80, at["p01"], at["p02"])]
    assert outcomes[0].swing == math.inf
    text = section(h, at["p00"], outcomes)
    assert "At the defaults: inf." in text and "undefined (0/0)" in text and "the ratio is infinite" in text
    # 0/0 supports no claim; no straight line runs through an infinite headline, so the end is named
    assert flips(h, at["p00"], outcomes) == [
        "reverses with `costs.access_ns` at its low end, 70 (headline undefined (0/0))"
    ]
    assert "infinite or undefined at 2 of 3 points" in verdict(h, at["p00"], outcomes)
    assert not tornado(h, at["p00"], outcomes, tmp_path / "t.png")  # nothing finite to plot
    assert not (tmp_path / "t.png").exists()


def test_a_headline_no_cost_moves_says_so_and_lists_the_costs():
    h = SPEC["headlines"][0]
    outcomes = [
        Outcome("costs.access_ns", 70, 140, 80, 0.4, 0.4),
        Outcome("secondary.fault_ns", 500, 7000, 1000, 0.4, 0.4),
    ]
    assert verdict(h, 0.4, outcomes).startswith(
        "**Holds for all costs in their ranges: no cost in its range moves it**"
    )
    text = section(h, 0.4, outcomes)
    assert "| cost |" not in text  # no table of zero swings
    assert "none of which moves it: `costs.access_ns`, `secondary.fault_ns`" in text
    # a headline infinite everywhere is unmoved too
    everywhere = [Outcome("costs.access_ns", 70, 140, 80, math.inf, math.inf)]
    assert "no cost in its range moves it" in verdict(h | {"claim": "above"}, math.inf, everywhere)
    assert "the ratio is infinite" in section(h | {"claim": "above"}, math.inf, everywhere)


def test_a_link_moves_every_copy_of_the_cost_and_a_list_key_writes_the_whole_list(tmp_path: Path):
    nic = {"secondary": {"name": "none", "memlock_mib": None}, "accesses_per_tick": 40}
    base = {"processes": [{"name": "guest1", "secondary": {"name": "kvm"}}, {"name": "cache", "memory_mib": 64}],
            "guest": {"devices": [nic]}}  # fmt: skip
    compared = [{"guest.devices.0.secondary.name": "vfio"}]
    names = _write_points([Point("p01", "secondary.fault_ns", 500, "low"), Point("p02", "costs.access_ns", 70, "low")],
                          compared, tmp_path, {"secondary": ["processes.0.secondary"]}, base)  # fmt: skip
    body = yaml.safe_load((tmp_path / "sensitivity_point" / f"{names[0]}.yaml").read_text())
    assert body["secondary"] == {"fault_ns": 500}
    assert body["processes"] == [{"name": "guest1", "secondary": {"name": "kvm", "fault_ns": 500}},
                                 {"name": "cache", "memory_mib": 64}]  # fmt: skip
    assert body["guest"] == {"devices": [{"secondary": {"name": "vfio", "memlock_mib": None}, "accesses_per_tick": 40}]}
    other = yaml.safe_load((tmp_path / "sensitivity_point" / f"{names[1]}.yaml").read_text())
    assert "processes" not in other and other["costs"] == {"access_ns": 70}  # not a linked cost


def test_every_experiment_has_headlines_whose_settings_exist_in_its_config():
    from omegaconf import OmegaConf

    from mmnsim.experiment import _spec, selected
    from mmnsim.sources import compose_checked

    for name in selected("all"):  # the real twin's experiments (NAME_real) vary no cost: the kernel has its own
        spec = _spec(name).get("sensitivity")
        assert spec and spec["headlines"], f"{name}: no sensitivity section"
        cfg = compose_checked([f"+experiment={name}", *spec.get("overrides", [])])
        for case in cases(spec):
            for key in case:
                assert OmegaConf.select(cfg, key, default="missing") != "missing", f"{name}: {key} is not a setting"
        for targets in (spec.get("link") or {}).values():
            for target in targets:
                assert OmegaConf.select(cfg, target) is not None, f"{name}: link target {target} is not in the config"
