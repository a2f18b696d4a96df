"""Shared helpers: compose the real Hydra config with overrides and build or run a simulation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from mmnsim import Simulation

os.environ.setdefault("HYDRA_FULL_ERROR", "0")


def config(*overrides: str):
    with initialize_config_module("mmnsim.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


# Small, fast defaults for tests: a 64 MiB guest on a 48 MiB host (1.33x overcommit).
SMALL = (
    "guest.memory_mib=64",
    "host.memory_mib=48",
    "host.swap_mib=128",
    "engine.accesses_per_tick=65536",
    "workload.accesses=300000",
)


def simulation(*overrides: str, small: bool = True, plugins=()) -> Simulation:
    return Simulation(config(*(SMALL if small else ()), *overrides), plugins=plugins)


def run(*overrides: str, small: bool = True, plugins=()) -> tuple[Simulation, dict]:
    sim = simulation(*overrides, small=small, plugins=plugins)
    return sim, sim.run()


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``mmnsim`` console script."""
    exe = Path(sys.executable).with_name("mmnsim")
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
