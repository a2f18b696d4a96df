"""Every cost carries a range and a source (the agreed format), mmnsim-costs prints them, docs/costs.md is
current, and the sources never reach the settings or the summary columns."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import config, run
from mmnsim.config import ConfigError
from mmnsim.output import config_hash, run_config
from mmnsim.sources import Cost, costs_of, doc

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*(ROOT / "conf").rglob("*.yaml"), *(ROOT / "examples").glob("*/*/conf/**/*.yaml")])


def costs_cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mmnsim-costs")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cost_has_a_source_and_its_default_in_range(path: Path):
    data = yaml.safe_load(path.read_text()) or {}
    problems = [c.problem for c in costs_of(data) if c.problem]
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_check_catches_a_missing_source_and_a_default_out_of_range():
    data = {"secondary": {"fault_ns": 9000, "zap_page_ns": 20,
                          "sources": {"fault_ns": {"range": [500, 7000], "source": "x"}}}}  # fmt: skip
    problems = [c.problem for c in costs_of(data) if c.problem]
    assert problems == ["secondary.fault_ns: default 9000 outside its range [500, 7000]",
                        "secondary.zap_page_ns: no `sources` entry (range and source)"]  # fmt: skip


def test_composed_configs_list_their_plugins_costs():
    keys = {c.key for c in costs_of(config("secondary=rdma", "policies=[swap,numa]"))}
    assert {"secondary.fault_ns", "secondary.mtt_update_ns", "policies.numa.migrate_page_ns", "costs.access_ns"} <= keys
    assert "secondary.age_page_ns" not in keys  # KVM's, not selected


def test_mmnsim_costs_prints_table_and_json():
    out = costs_cli("secondary=gpu")
    assert out.returncode == 0, out.stderr
    assert "| `secondary.batch_ns` | 20,000 | 20,000 - 50,000 | Kim et al." in out.stdout
    rows = json.loads(costs_cli("--json", "secondary=gpu").stdout)
    batch = next(r for r in rows if r["key"] == "secondary.batch_ns")
    assert (batch["value"], batch["low"], batch["high"]) == (20000, 20000, 50000)
    assert all(r["source"] for r in rows)


@pytest.mark.parametrize("bad", ["secondary=rmda", "secondary.fault_ns=abc", "costs.acess_ns=1"])
def test_mmnsim_costs_bad_override_is_one_line_exit_2(bad: str):
    out = costs_cli(bad)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mmnsim-costs: "), out.stderr


def test_docs_costs_is_current():
    assert (ROOT / "docs" / "costs.md").read_text() == doc(), "regenerate: mmnsim-costs --doc > docs/costs.md"


def test_sources_stay_out_of_settings_columns_and_hash():
    cfg = config()
    assert "sources" in cfg.secondary and "sources" in cfg.costs
    flat = json.dumps(run_config(cfg))
    assert "sources" not in flat
    changed = config("secondary.sources.fault_ns.source=another")
    assert config_hash(changed) == config_hash(cfg)  # a citation is documentation, not a run's input
    _, metrics = run("workload.accesses=70000")
    assert metrics["accesses"] >= 70000  # a run with sources in its nodes runs


def test_a_cost_override_still_works_and_is_checked():
    assert config("secondary.fault_ns=1500").secondary.fault_ns == 1500
    from mmnsim.sources import compose_checked

    with pytest.raises(ConfigError, match="secondary.fault_ns"):
        compose_checked(["secondary.fault_ns=-1"])


def test_cost_problem_names_the_fault():
    assert Cost("k_ns", 5, None, None, "").problem == "k_ns: no `sources` entry (range and source)"
    assert Cost("k_ns", 5, 1, 10, " ").problem == "k_ns: empty source"
    assert Cost("k_ns", 5, 1, 10, "x").problem == ""


# --- where some costs come from (framework/costchecks.py, the end of docs/costs.md) ----------------------

from mmnsim.costchecks import ROWS as COST_CHECKS  # noqa: E402


@pytest.mark.parametrize("row", COST_CHECKS, ids=[r.name.split(":")[0] for r in COST_CHECKS])
def test_cost_check_keeps_its_status(row):
    """Each cost stays inside its tolerance of the measurement it was set from, or, for one marked outside,
    stays outside until the row is updated."""
    value = row.model()
    if row.known_outside():
        assert not row.inside(value), f"{row.name}: now inside its tolerance ({value:g}); mark it inside"
    else:
        assert row.inside(value), (
            f"{row.name}: {value:g} {row.unit} outside [{row.low / row.tolerance:g}, {row.high * row.tolerance:g}]"
        )
