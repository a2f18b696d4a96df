"""The memory guard (``framework/memory.py``) and the bounded time series (``framework/timeseries.py``).

The estimate must match the arrays a built simulation holds; a run that needs more than the machine has
or ``engine.max_memory_gib`` allows stops in the up-front check with exit status 2; the time series keeps
at most ``MAX_ROWS`` (+ the last) rows however many ticks a run has, the last tick included.
"""

import gc
import types

import numpy as np
import pytest

from conftest import SMALL, cli, config, simulation
from mmnsim import memory, timeseries
from mmnsim.cli import check_overrides
from mmnsim.config import ConfigError
from mmnsim.settings import load_settings


def _array_bytes(root) -> int:
    """Bytes of every numpy array reachable from ``root`` (each base array once: a read-only view's, through
    the read-only buffer it is built on, is the framework's writable array)."""
    seen, total, stack = set(), 0, [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, np.ndarray):
            while isinstance(obj.base, np.ndarray | memoryview):
                obj = obj.base.obj if isinstance(obj.base, memoryview) else obj.base
            if id(obj) not in seen:
                seen.add(id(obj))
                total += obj.nbytes
            continue
        if id(obj) in seen or isinstance(obj, type | types.ModuleType | types.FunctionType):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return total


@pytest.mark.parametrize(
    "overrides",
    [
        ("guest.memory_mib=256", "host.memory_mib=192", "host.swap_mib=256"),
        ("guest.memory_mib=128", "guest.count=2", "host.memory_mib=256", "host.swap_mib=64", "host.numa_nodes=2",
         "guest.devices=[{secondary: {name: rdma}, workload: {name: uniform}, node: 1}]"),
    ],
)  # fmt: skip
def test_the_estimate_is_the_arrays_a_built_simulation_holds(overrides):
    sim = simulation("engine.timeseries=false", "workload.accesses=1000", *overrides)
    parts = memory.estimate(load_settings(sim.cfg, sim.registry))
    tables = sum(v for k, v in parts.items() if k not in ("access batches", "time series"))
    held = _array_bytes(sim)
    assert 0.9 * held <= tables <= 1.1 * held, (parts, held)


def test_at_16_gib_the_estimate_is_the_measured_bytes_per_guest_page():
    """README's benchmark: 37.7 B per guest page of peak RSS at 16 GiB (host 10923 MiB, swap 16 GiB, zipf,
    KVM). The estimate counts what is allocated, a little above what is resident: zero-filled arrays (swap
    tokens, for one) take no RAM until written."""
    cfg = config("guest.memory_mib=16384", "host.memory_mib=10923", "host.swap_mib=16384", "engine.timeseries=false",
                 "engine.max_memory_gib=10000")  # fmt: skip
    settings = load_settings(cfg, simulation_registry())
    per_page = sum(memory.estimate(settings).values()) / (16384 * 256)
    assert 37.7 <= per_page <= 37.7 * 1.25


def simulation_registry():
    from mmnsim.discovery import Registry, plugin_manager

    return Registry.from_plugins(plugin_manager())


def test_a_run_larger_than_the_machine_or_the_cap_stops_before_any_job():
    with pytest.raises(ConfigError, match=r"memory: the run needs about .* GiB .*MemAvailable"):
        check_overrides(["guest.memory_mib=8000000", "host.oom=kill"])
    with pytest.raises(ConfigError, match=r"engine.max_memory_gib allows 0.05 GiB"):
        check_overrides(["engine.max_memory_gib=0.05"])
    with pytest.raises(ConfigError, match="memory: "):  # every job of a sweep
        check_overrides(["-m", "guest.memory_mib=64,8000000", "host.oom=kill"])
    check_overrides(["engine.max_memory_gib=2"])  # the default run fits in 2 GiB


def test_the_memory_guard_exits_2_with_one_line(workdir):
    result = cli(*SMALL, "engine.max_memory_gib=0.001", cwd=workdir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("mmnsim: memory: the run needs about")
    assert not (workdir / "outputs").exists()


def test_time_series_keeps_evenly_spaced_ticks_and_the_last():
    ts = timeseries.TimeSeries(max_rows=8)
    for tick in range(1001):
        ts.add(tick, {"tick": tick})
    ticks = [r["tick"] for r in ts.to_list()]
    assert len(ticks) <= 9
    assert ticks[-1] == 1000
    steps = np.diff(ticks[:-1])
    assert ticks[0] == 0 and len(set(steps.tolist())) == 1 and steps[0] >= 1000 // 8


def test_a_long_run_keeps_a_bounded_time_series_ending_at_its_last_tick(monkeypatch):
    monkeypatch.setattr(timeseries, "MAX_ROWS", 16)
    sim = simulation("engine.accesses_per_tick=2048", "workload.accesses=200000")
    metrics = sim.run()
    rows = sim.timeseries_rows()
    assert metrics["ticks"] > 100
    assert len(rows) <= 17
    assert rows[-1]["tick"] == metrics["ticks"] - 1
    assert rows[-1]["accesses"] == metrics["accesses"]
