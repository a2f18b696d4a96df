"""Shared helpers: compose the real Hydra config with overrides and build or run a simulation."""

import errno
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


# A full or read-only disk: a small tmpfs mounted in the test's folder (root only; skipped elsewhere).
PAGE = 4096


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs in the test's folder (``tmpfs(name, options)``), unmounted after the test."""
    mounted = []

    def mount(name: str, options: str = "size=256k") -> Path:
        where = tmp_path / name
        where.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path, free_pages: int = 0) -> None:
    """Fill the file system, then free ``free_pages`` pages of it (a tmpfs allocates a page per 4 KiB)."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.write(fd, b"x" * PAGE):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    os.ftruncate(fd, max(os.fstat(fd).st_size - free_pages * PAGE, 0))
    os.close(fd)


def real_host_missing(kvm: bool = True, tracefs: bool = True) -> str | None:
    """Why the real twin's tests cannot run here (None: they can): root for a memory cgroup v1 and a swap
    file, and, as asked, /dev/kvm and tracefs. The reason is the skip's."""
    from mmnsim.real import cgroup, tracing
    from mmnsim.real.errors import HostError

    if os.geteuid() != 0:
        return "needs root (a memory cgroup, a swap file, a tracing instance, KVM)"
    if kvm and not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    try:
        cgroup.memory_hierarchy_v1()
    except HostError as exc:
        return str(exc)
    if tracefs and tracing.find_tracefs() is None and "tracefs" not in Path("/proc/filesystems").read_text().split():
        return "the kernel has no tracefs"
    return None
