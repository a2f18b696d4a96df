"""``code_hash`` covers the code a run uses: the framework, its built-in plugins and conf, and only the
installed plugin packages whose components the config selects (or that register none: hook-only plugins
run in every simulation). Installing or editing an unrelated plugin package must not make a sweep rerun.

A plugin package is "installed" here by putting a package and its ``dist-info`` (with the entry point)
on ``sys.path``, which is all ``importlib.metadata`` and pluggy look at.
"""

import sys

import pytest
from omegaconf import open_dict

from conftest import config
from mmnsim import output

PLUGIN = """
from dataclasses import dataclass
from mmnsim import HostPolicy, hookimpl

VERSION = {version}

@dataclass
class Config:
    pass

class Extra(HostPolicy):
    name = "{name}"
    Config = Config

@hookimpl
def register_components():
    return [Extra]
"""


def install(root, name: str, version: int = 1) -> None:
    package = root / f"plug_{name}"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(PLUGIN.format(name=name, version=version))
    info = root / f"plug_{name}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: plug-{name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mmnsim]\n{name} = plug_{name}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("plug_")]:
        del sys.modules[name]
    output._hash_packages.cache_clear()


def test_an_unrelated_plugin_package_leaves_the_hash_alone_and_a_used_one_changes_it(site):
    cfg = config("seed=1")
    before = output.code_hash(cfg)
    install(site, "unused")
    assert output.code_hash(cfg) == before  # installed, not selected: same hash, nothing reruns

    install(site, "used")
    uses = config("seed=1")
    with open_dict(uses):
        uses.policies["used"] = {}
    with_plugin = output.code_hash(uses)
    assert with_plugin != before  # the run uses it: its code is in the hash
    assert output.selected_components(uses) >= {("policy", "used"), ("policy", "swap"), ("secondary", "kvm")}

    install(site, "used", version=2)  # an edit of the plugin the run uses
    del sys.modules["plug_used"]
    output._hash_packages.cache_clear()
    assert output.code_hash(uses) != with_plugin
    assert output.code_hash(cfg) == before


def test_components_of_processes_and_devices_are_selected():
    cfg = config(
        "+processes=[{name: p, memory_mib: 8, node: 0, workload: {name: uniform}, secondary: {name: rdma}}]",
        "guest.devices=[{secondary: {name: gpu}, workload: {name: sequential}}]",
    )
    assert output.selected_components(cfg) >= {("workload", "uniform"), ("secondary", "rdma"),
                                               ("secondary", "gpu"), ("workload", "sequential")}  # fmt: skip
