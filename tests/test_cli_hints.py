"""Command-line hints and exit statuses: ``scenario=NAME`` without ``+``, ``policies=a,b`` outside ``-m``,
``mmnsim --help`` describing mmnsim, and every input error of every command exiting with status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli
from mmnsim.cli import check_overrides
from mmnsim.config import ConfigError


def tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(name)
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_scenario_without_plus_says_to_write_plus():
    with pytest.raises(ConfigError) as info:
        check_overrides(["scenario=numa_wrong_node"])
    assert str(info.value) == (
        "scenario=numa_wrong_node: scenario is not in the default config; add it with '+scenario=numa_wrong_node'"
    )


def test_policies_with_commas_outside_multirun_suggests_a_list():
    with pytest.raises(ConfigError) as info:
        check_overrides(["policies=swap,numa"])
    assert "add -m (--multirun)" in str(info.value)
    assert "write 'policies=[swap,numa]'" in str(info.value)
    with pytest.raises(ConfigError) as info:  # another key: only -m
        check_overrides(["seed=1,2"])
    assert "policies" not in str(info.value) and "[" not in str(info.value)


def test_help_describes_mmnsim_not_hydra(tmp_path):
    out = cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    text = out.stdout
    assert text.startswith("mmnsim: simulate the Linux kernel's mmu_notifier mechanism")
    assert "is powered by Hydra" not in text
    for part in ("secondary: ", "policies: ", "+scenario=NAME", "host.memory_mib", "guest.memory_mib",
                 "engine.max_memory_gib", "README.md", "docs/plugins.md", "-m"):  # fmt: skip
        assert part in text, part


@pytest.mark.parametrize(
    "args, message",
    [
        (["hydra.launcher.n_jobs=abc"], "hydra.launcher.n_jobs=abc"),
        (["-m", "hydra/launcher=nosuch", "seed=1,2"], "hydra/launcher: unknown option 'nosuch'"),
        (["hydra.nosuch=1"], "hydra.nosuch"),
        (["--cfg", "jobb"], "invalid choice"),
    ],
)
def test_hydra_keys_and_flags_are_input_errors_too(tmp_path, args, message):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize(
    "command, args",
    [
        ("mmnsim-report", ["/nonexistent-dir"]),
        ("mmnsim-report", ["."]),  # no runs
        ("mmnsim-report", ["--bogus"]),
        ("mmnsim-trace", ["info", "/nonexistent.mmt"]),
        ("mmnsim-trace", ["bogus"]),
        ("mmnsim-experiment", ["nosuch"]),
        ("mmnsim-experiment", ["swap", "secondary=5"]),  # a bad override: before any job runs
        ("mmnsim-experiment", ["all", "--out", "x"]),
        ("mmnsim-plugins", ["--bogus"]),
    ],
)
def test_every_command_exits_2_on_input_errors(tmp_path, command, args):
    out = tool(command, *args, cwd=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "host.min_free_kbytes=0,100000000"], "leave no usable memory on node 0"),
        (["-m", "host.numa_nodes=2", "host.distance=[[10,20],[20,10]],[[10,20],[20]]"],
         "host.distance: must be a 2x2 matrix (numa_nodes=2), got rows of [2, 1]"),
        (["-m", "host.numa_nodes=2,1", "guest.vcpu_nodes=[1]"], "guest.vcpu_nodes: [1] names a node outside 0..0"),
        (["-m", "seed=0,1", "guest.devices=[{secondary: {name: rdma}, workload: {name: zipf}, node: 3}]"],
         "guest.devices[0].node: 3 is outside 0..0"),
        (["-m", "workload.boot=true,8451285"], "workload.boot: invalid value 8451285; expected true or false"),
        (["-m", "engine.check_invariants=false,1"], "engine.check_invariants: invalid value 1; expected true or false"),
    ],
)  # fmt: skip
def test_combinations_and_booleans_are_checked_for_every_job_of_a_sweep(args, message):
    with pytest.raises(ConfigError) as info:
        check_overrides(args)
    assert message in str(info.value)
