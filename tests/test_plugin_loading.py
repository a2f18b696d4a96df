"""Plugin loading fails cleanly: a package that does not import is reported in one line and left out, a
misspelled @hookimpl or a Config that is not a dataclass is an error naming the plugin, a package that
registers nothing warns, and an exception in any plugin hook is a PluginError naming plugin and hook."""

import logging
import textwrap
from pathlib import Path

import pytest

from conftest import simulation
from mmnsim import ConfigError, HostPolicy, NoConfig, PluginError, discovery, hookimpl
from mmnsim.plugins.kvm import KVM


def _install(root: Path, package: str, source: str) -> None:
    """A package on sys.path with an ``mmnsim`` entry point, as pip would leave it."""
    (root / f"{package}.py").write_text(textwrap.dedent(source))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mmnsim]\n{package} = {package}\n")


def test_a_package_that_does_not_import_is_reported_and_left_out(tmp_path, monkeypatch, caplog):
    _install(tmp_path, "mmnsim_broken_syntax", "def oops(:\n")
    _install(tmp_path, "mmnsim_missing_dep", "import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(discovery, "_reported", set())
    with caplog.at_level(logging.WARNING, logger="mmnsim"):
        pm = discovery.plugin_manager()
    assert set(pm.broken) == {"mmnsim_broken_syntax", "mmnsim_missing_dep"}
    lines = [r.getMessage() for r in caplog.records]
    assert any("plugin package 'mmnsim_broken_syntax'" in m and "SyntaxError" in m for m in lines), lines
    assert any("'mmnsim_missing_dep'" in m and "No module named 'no_such_module_anywhere'" in m for m in lines)
    assert all("\n" not in m for m in lines)
    rows = {r["name"]: r for r in discovery.describe(pm)}
    assert rows["mmnsim_missing_dep"]["kind"] == "BROKEN" and "does not load" in rows["mmnsim_missing_dep"]["hooks"]
    assert simulation("workload.accesses=1000").run()["accesses"] > 0  # runs not using them go on


def test_a_package_that_registers_nothing_warns(tmp_path, monkeypatch, caplog):
    _install(tmp_path, "mmnsim_empty_plugin", "X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(discovery, "_reported", set())
    with caplog.at_level(logging.WARNING, logger="mmnsim"):
        discovery.plugin_manager()
    assert "entry point mmnsim_empty_plugin (mmnsim_empty_plugin) registers no components" in caplog.text


def _plugin(*components):
    class Plugin:
        @staticmethod
        @hookimpl
        def register_components():
            return list(components)

    return Plugin


def test_a_hookimpl_that_is_no_hook_names_the_plugin_and_the_closest_hook():
    class Misspelled(KVM):
        name = "misspelled"

        @hookimpl
        def invalidate_rnage_start(self, ranges):
            pass

    with pytest.raises(ConfigError, match=r"@hookimpl 'invalidate_rnage_start' is not a hook of the spec; did you "
                                          r"mean 'invalidate_range_start'\?"):  # fmt: skip
        simulation("secondary.name=misspelled", plugins=[_plugin(Misspelled)])


def test_a_config_that_is_not_a_dataclass_names_the_plugin():
    class Undeclared(HostPolicy):
        name = "undeclared"

        class Config:
            period: int = 1

    with pytest.raises(ConfigError, match=r"Undeclared.Config is .* not a dataclass"):
        simulation(plugins=[_plugin(Undeclared)])


class Crashes(HostPolicy):
    name = "crashes"
    Config = NoConfig

    @hookimpl
    def collect_metrics(self, sim):
        raise KeyError("no such metric")


def test_an_exception_in_a_policy_hook_is_a_plugin_error_naming_plugin_and_hook(caplog):
    from omegaconf import open_dict

    from conftest import config
    from mmnsim import Simulation

    cfg = config("workload.accesses=1000")
    with open_dict(cfg):
        cfg.policies.crashes = {}
    sim = Simulation(cfg, plugins=[_plugin(Crashes)])
    with caplog.at_level(logging.ERROR, logger="mmnsim"), pytest.raises(PluginError) as info:
        sim.run()
    assert str(info.value) == "policy 'crashes' raised in collect_metrics: KeyError('no such metric')"
    assert "Traceback" in caplog.text and "collect_metrics" in caplog.text  # the traceback goes to the log
