"""Every public operation a plugin can call, called from a host policy's hook with odd arguments (seeded).

Run by ``tests/test_plugin_calls.py`` in a subprocess, so that a crash of the process (a compiled kernel
indexing past memory) is seen as one: ``python tests/fuzz_operations.py SEED CASES LOGFILE`` prints one JSON
line of results. Each case calls one operation, with at least one argument drawn from that argument's odd
values (a negative number, one past the end, a float, a NaN, a huge int, a wrong dtype or shape, a
non-array, another simulation's object) and the others valid, from inside ``host_tick`` of the policy
``fuzzer``. A rejected call must come out as a ``PluginError`` naming the policy (and, for an operation,
the operation) and must leave the host exactly as it was; an accepted one must leave every invariant
holding. Plugin tracebacks go to LOGFILE, as the ``mmnsim`` command sends them to the run's log.
"""

import copy
import hashlib
import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import mmnsim  # noqa: E402
from conftest import config  # noqa: E402
from mmnsim import HostPolicy, NoConfig, PluginError, Simulation, hookimpl, invariants  # noqa: E402
from mmnsim.apidoc import INTERNAL  # noqa: E402
from mmnsim.host import Host  # noqa: E402
from mmnsim.simulation import Client  # noqa: E402

# Argument kinds, and per operation its arguments' kinds (a value for ``self`` where it is a method).
OPERATIONS: dict[str, tuple[str, ...]] = {
    # mmnsim's functions
    "collapse_huge_page": ("sim", "mm", "thp_first", "ram_node"),
    "compact": ("sim", "ram_node", "count"),
    "merge_pages": ("sim", "mm", "pages", "mm", "pages", "bool"),
    "mergeable": ("sim", "mm", "pages"),
    "is_shared": ("sim", "mm", "pages"),
    "migrate": ("sim", "mm", "pages", "node", "owner", "count"),
    "referenced": ("sim", "frames", "young_op"),
    "scan_frames": ("sim", "frame", "count", "count"),
    "swap_out": ("sim", "frames"),
    "folio_pages": ("sim", "frames"),
    "lru_folios": ("sim", "mm", "count"),
    "shrink_batch": ("sim", "frame", "count", "count", "count", "young_op"),
    "shrink_inactive": ("sim", "frame", "count", "count", "young_op"),
    "shrink_active": ("sim", "frame", "count", "count", "young_op"),
    "inactive_is_low": ("count", "count"),
    "may_deactivate": ("count", "count", "bool"),
    "charge_reclaim": ("sim", "count", "count"),
    "split_huge_pages": ("sim", "mm", "pages"),
    "NotifierRange": ("mm", "starts", "ends", "event"),
    "single_pages": ("mm", "pages", "event"),
    # an mm's operations
    "MM.mmap": ("mm", "start", "end", "prot"),
    "MM.access": ("mm", "pages", "writes"),
    "MM.munmap": ("mm", "start", "end"),
    "MM.madvise_dontneed": ("mm", "start", "end"),
    "MM.discard": ("mm", "pages"),
    "MM.mprotect": ("mm", "start", "end", "prot"),
    "MM.mkclean": ("mm", "pages"),
    "MM.change_prot_numa": ("mm", "start", "end", "bool"),
    "MM.invalidate": ("mm", "ranges", "change"),
    "MM.invalidate_pages": ("mm", "pages", "event", "change"),
    # the simulation's services
    "Simulation.migrate": ("sim", "mm", "pages", "node"),
    "Simulation.populate": ("sim", "secondary", "start", "end"),
    "Simulation.swap_in": ("sim", "mm", "pages"),
    "Simulation.counter": ("sim", "counter"),
    "Simulation.secondaries_of": ("sim", "mm"),
    "Simulation.mm_of_key": ("sim", "key"),
    "Simulation.charge": ("sim", "ns"),
    "Simulation.deferred_flushes": ("sim", "secondary", "count"),
    "Simulation.numa_faults": ("sim", "ns"),
    "Simulation.run_client": ("sim", "mm", "secondary_or_none", "pages", "writes"),
    # a secondary MMU's helpers
    "SecondaryMMU.populate": ("secondary", "start", "end"),
    "SecondaryMMU.set_fault_block": ("secondary", "block"),
    "SecondaryMMU.set_prefetch": ("secondary", "block"),
    "SecondaryMMU.fault_around": ("secondary", "page"),
    "SecondaryMMU.invalidate_self": ("secondary", "ranges"),
    "SecondaryMMU.begin_invalidate": ("secondary", "ranges"),
    "SecondaryMMU.set_seq": ("secondary", "count"),
    "SecondaryMMU.zap": ("secondary", "starts", "ends"),
    "SecondaryMMU.harvest_accessed": ("secondary", "starts", "ends", "bool"),
    "SecondaryMMU.shadow_young": ("secondary", "starts", "ends"),
    "SecondaryMMU.migrate_to_ram": ("gpu", "pages", "ram_node"),
    # the host's figures
    "Host.free_on": ("host", "node"),
    "Host.watermark": ("host", "ram_node"),
    "Host.is_pinned": ("host", "frames"),
    "Host.node_of": ("host", "frame"),
    "Host.nodes_of": ("host", "frames"),
    "Host.free_blocks": ("host", "node"),
    # a client's
    "Client.stall": ("client", "ns"),
}
# Public methods with nothing to fuzz: no arguments, or arguments a plugin implements rather than passes
# (they are calls into a plugin, wrapped as hooks are: tests/test_plugin_calls.py).
NO_ARGUMENTS = {
    "MM.exit", "MM.oom_reap", "MM.clear_soft_dirty", "Simulation.use_exact_clock", "Simulation.use_lru_lists",
    "lru_sizes", "lru_stats", "Simulation.now_ns", "Simulation.take_hint_faults",
    "SecondaryMMU.attach", "SecondaryMMU.teardown", "SecondaryMMU.end_invalidate", "SecondaryMMU.bump_seq",
    "SecondaryMMU.mapped_pages", "SecondaryMMU.tlb_huge", "Host.free_frames", "Host.pages_to_high",
    "Host.pages_to_low", "Host.high_watermarks", "Host.above_min", "Host.pinned_pages", "Host.swap_used",
    "sharing", "MM.counters",
}  # fmt: skip
PLUGIN_IMPLEMENTED = {"SecondaryMMU.walk_refs", "SecondaryMMU.fault_cost_ns", "SecondaryMMU.guest_mode_ns",
                      "SecondaryMMU.region_of", "SecondaryMMU.device_memory_pages", "SecondaryMMU.charge_zap",
                      "SecondaryMMU.charge_aging"}  # fmt: skip
# Pure helpers: odd input is numpy's own error, still a PluginError naming the plugin; not operations on state.
HELPERS = {
    "expand_ranges": ("starts", "ends"),
    "sum_per_range": ("starts", "ends", "pages"),
    "walk_refs": ("ns", "count"),
}
# Exported for configs, not called at run time (they raise ConfigError: a configuration's error).
CONFIG_TIME = {"device_region", "require", "data_path", "read_trace", "probe", "Metric"}
# An operation's name in its own error messages, where it differs (beside its own name).
SPELLED = {"MM.access": "run_client", "Simulation.migrate": "migrate", "Simulation.populate": "populate",
           "SecondaryMMU.populate": "populate", "SecondaryMMU.migrate_to_ram": "migrate", "Host.watermark": "watermark",
           "single_pages": "NotifierRange"}  # fmt: skip

NAN = float("nan")


class Fuzzer(HostPolicy):
    name = "fuzzer"
    Config = NoConfig
    case = None

    @hookimpl
    def host_tick(self, sim):
        if self.case is not None:
            fn, args = self.case
            fn(*args)


class Plugin:
    @staticmethod
    @hookimpl
    def register_components():
        return [Fuzzer]


def public_operations() -> set[str]:
    """Every public operation a plugin can call, from the objects: mmnsim's functions taking arguments, and
    the methods the API reference lists for an mm, the simulation, a secondary MMU, the host and a client."""
    import inspect

    names = {n for n in mmnsim.__all__ if inspect.isfunction(getattr(mmnsim, n)) or n == "NotifierRange"}
    names -= {"hookimpl", "hookspec", "kernel", "prefetch"}
    for cls in (mmnsim.MM, Simulation, mmnsim.SecondaryMMU, Host, Client):
        skip = INTERNAL.get(cls.__name__, set())
        for name, value in vars(cls).items():
            if name.startswith("_") or name in skip or isinstance(value, property):
                continue
            if callable(value) or isinstance(value, classmethod | staticmethod):
                names.add(f"{cls.__name__}.{name}")
    return names


def build() -> Simulation:
    cfg = copy.deepcopy(BASE)
    return Simulation(cfg, plugins=[Plugin])


BASE = config(
    "guest.memory_mib=4", "host.memory_mib=8", "host.swap_mib=8", "host.numa_nodes=2", "host.thp=always",
    "workload.accesses=0", "workload.boot=false", "engine.timeseries=false", "+policies.fuzzer={}",
    "guest.devices=[{secondary: {name: gpu, device_memory_mib: 1, migrate_hot_pages: 16}, workload: {name: uniform,"
    " accesses: 0, boot: false}}]",
)  # fmt: skip


def prepare(sim: Simulation) -> None:
    """Some state for the operations to work on: pages in RAM through the CPU and the devices, a THP."""
    mm = sim.mms[0]
    sim.run_client(mm, None, np.arange(0, 600), np.ones(600, bool))
    for sec in sim.secondaries:
        lo, hi = sec.region
        sim.run_client(mm, sec, np.arange(lo, min(hi, lo + 64)), np.ones(min(hi - lo, 64), bool))
    for _ in range(2):  # the GPU moves the pages it used into its memory; then its host_tick has nothing to do
        sim.call_hook("host_tick", sim=sim)


def valid(kind: str, sim: Simulation, rng: np.random.Generator):
    mm = sim.mms[0]
    n = mm.npages
    frames = mm.pte[mm.pte >= 0]
    if kind == "sim":
        return sim
    if kind == "mm":
        return mm
    if kind == "host":
        return sim.host
    if kind == "client":
        return sim.clients[0]
    if kind in ("secondary", "secondary_or_none"):
        return sim.secondaries[0]
    if kind == "gpu":
        return sim.secondaries[1]
    if kind in ("page", "key"):
        return int(rng.integers(0, 64))
    if kind == "thp_first":
        return 512
    if kind == "pages":
        return np.arange(int(rng.integers(0, 64)), 70)
    if kind == "start":
        return int(rng.integers(0, 32))
    if kind == "end":
        return int(rng.integers(40, 64))
    if kind == "starts":
        return np.array([0, 10])
    if kind == "ends":
        return np.array([5, 20])
    if kind == "frame":
        return int(frames[0])
    if kind == "frames":
        return frames[:8].astype(np.int64)
    if kind in ("node", "ram_node"):
        return 0
    if kind == "count":
        return 1
    if kind == "block":
        return 4
    if kind == "ns":
        return 10.0
    if kind == "prot":
        return "rw"
    if kind == "young_op":
        return "clear_young"
    if kind == "ranges":
        return mmnsim.NotifierRange(mm, np.array([0]), np.array([8]), mmnsim.Event.CLEAR)
    if kind == "change":
        return lambda: None
    if kind == "event":
        return mmnsim.Event.CLEAR
    if kind == "counter":
        return "accesses"
    if kind == "bool":
        return True
    if kind == "writes":
        return None
    if kind == "owner":
        return None
    raise AssertionError(f"no valid value for {kind} ({n})")


def odd(kind: str, sim: Simulation, other: Simulation, rng: np.random.Generator) -> list:
    """The odd values of an argument of ``kind`` (empty: nothing odd to pass, e.g. a flag)."""
    mm = sim.mms[0]
    n, nframes, nodes = mm.npages, sim.host._ft.key.size, sim.host._ft.node.shape[0]
    ints = [-1, -(2**31), -(2**63), 2**31, 2**63 - 1, 2**64, 2**100, 1.5, NAN, math.inf, "7", None, True,
            np.uint64(2**64 - 1), np.float32(2.0), [3], object()]  # fmt: skip
    arrays = [[-1], [2**40], np.array([-1], np.int8), np.array([2**64 - 1], np.uint64), np.array([NAN]),
              np.array([1.5]), np.array([[0, 1]]), np.array([True, False]), ["x"], [None], "abc", 5, None, [2**70],
              {1: 2}, np.array([3], dtype=object)]  # fmt: skip
    if kind in ("page", "key", "start", "end", "thp_first"):
        return [*ints, n, n + 1, 513, -512] if kind != "key" else [*ints, sim.host._pt.pte.size]
    if kind == "pages":
        return [*arrays, [n], np.array([n], np.int32), np.arange(n - 2, n + 2)]
    if kind in ("starts", "ends"):
        return [*arrays, [n + 1], np.array([0, 1, 2])]
    if kind == "frame":
        return [*ints, nframes]
    if kind == "frames":
        return [*arrays, [nframes], np.array([nframes - 1, nframes])]
    if kind == "node":
        return [*ints, nodes]
    if kind == "ram_node":
        return [*ints, sim.host.nodes, nodes - 1]  # the last node is the GPU's memory
    if kind in ("count", "block"):
        return [*ints[:3], *ints[5:], -5] + ([3, 2**20] if kind == "block" else [])
    if kind == "ns":
        return [-1.0, NAN, math.inf, -math.inf, "1", None, [1.0], 1j]
    if kind == "prot":
        return ["rwx", None, 5, ["r"], ""]
    if kind == "young_op":
        return ["test_young", None, 3]
    if kind in ("mm",):
        return [None, "guest0", 0, other.mms[0], object()]
    if kind in ("secondary", "gpu"):
        return [None, object(), other.secondaries[0]]
    if kind == "secondary_or_none":
        return [object(), other.secondaries[0], other.secondaries[1]]
    if kind == "owner":
        return [object(), other.secondaries[0], "gpu"]
    if kind == "ranges":
        fake = type("Ranges", (), {"mm": mm, "start": np.array([-5]), "end": np.array([1]), "event": 1})()
        return [None, (0, 8), fake, mmnsim.NotifierRange(other.mms[0], np.array([0]), np.array([8]), 1), "x"]
    if kind == "change":
        return [None, 5, "x"]
    if kind == "event":
        return [42, -1, "CLEAR", None, 2.5]
    if kind == "counter":
        return ["nosuch", None, 3]
    if kind == "writes":
        return [np.array([NAN]), np.zeros(3, bool), "x", [[True]], np.ones(10**3, bool)]
    return []  # bool, sim, host, client: no odd value of interest


def resolve(name: str, args: list):
    """The callable for an operation name: a function of mmnsim, or a method looked up on the object it is
    called on (``args[0]``, so that a plugin's override is the one called)."""
    if "." not in name:
        return getattr(mmnsim, name)
    method = name.partition(".")[2]
    bound = getattr(args[0], method)
    return lambda _self, *rest: bound(*rest)


def fingerprint(sim: Simulation) -> str:
    h = hashlib.sha256()
    host = sim.host
    for a in (*host._pt, *host._ft, *host._sw, host._ctr):
        h.update(np.ascontiguousarray(a).tobytes())
    for sec in sim.secondaries:
        for a in (sec._spte, sec._sflags, sec._accessed, sec._state):
            h.update(a.tobytes())
    return h.hexdigest()


def main(seed: int, cases: int, logfile: str) -> None:
    tracebacks = logging.getLogger("mmnsim.traceback")  # as the mmnsim command's logging config does
    tracebacks.addHandler(logging.FileHandler(logfile))
    tracebacks.propagate = False
    rng = np.random.default_rng(seed)
    other = build()
    sim = build()
    prepare(sim)
    fuzzer = next(p for p in sim.policies if p.name == "fuzzer")
    results: dict[str, Counter] = {name: Counter() for name in [*OPERATIONS, *HELPERS]}
    failures: list[str] = []
    named: dict[str, int] = Counter()
    unnamed: dict[str, list[str]] = {name: [] for name in OPERATIONS}
    specs = {**OPERATIONS, **HELPERS}
    for i in range(cases):
        name = list(specs)[i % len(specs)]
        kinds = specs[name]
        args = [valid(k, sim, rng) if k not in HELPERS.get(name, ()) else None for k in kinds]
        if name in HELPERS:
            args = [np.array([0, 4]), np.array([2, 9]), np.ones(7)][: len(kinds)] if name != "walk_refs" else [0.1, 4]
        first = 1 if "." in name else 0  # not the object a method is called on
        oddable = [j for j, k in enumerate(kinds) if j >= first and odd(k, sim, other, rng)]
        for j in rng.choice(oddable, size=int(rng.integers(1, min(2, len(oddable)) + 1)), replace=False):
            choices = odd(kinds[j], sim, other, rng)
            args[j] = choices[int(rng.integers(0, len(choices)))]
        fn = resolve(name, args)
        before = fingerprint(sim)
        fuzzer.case = (fn, args)
        desc = f"case {i}: {name}({', '.join(repr(a)[:40] for a in args)})"
        try:
            sim.call_hook("host_tick", sim=sim)
        except PluginError as exc:
            message = str(exc)
            if name in OPERATIONS and "called an operation with a bad argument" not in message:
                unnamed[name].append(message[:160])
            if "policy 'fuzzer'" not in message:
                failures.append(f"{desc}: PluginError not naming the policy: {message}")
            if name in OPERATIONS:
                spelled = (SPELLED.get(name, ""), name.rpartition(".")[2])
                if "called an operation with a bad argument" in message and any(s and s in message for s in spelled):
                    named[name] += 1
            if fingerprint(sim) != before:
                failures.append(f"{desc}: rejected, but the host changed")
            results[name]["rejected"] += 1
        except Exception as exc:  # noqa: BLE001 (what the test is looking for)
            failures.append(f"{desc}: {type(exc).__name__} escaped: {exc}"[:300])
            sim = build()
            prepare(sim)
            fuzzer = next(p for p in sim.policies if p.name == "fuzzer")
        else:
            results[name]["accepted"] += 1
            report = invariants.check(sim)
            if report:
                failures.append(f"{desc}: accepted, and then {report.messages[0][:200]}")
            sim = build()  # an accepted call may have changed anything: start the next case afresh
            prepare(sim)
            fuzzer = next(p for p in sim.policies if p.name == "fuzzer")
        finally:
            fuzzer.case = None
    print(json.dumps({"results": {k: dict(v) for k, v in results.items()}, "named": dict(named),
                      "unnamed": {k: v for k, v in unnamed.items() if v},
                      "failures": failures, "operations": sorted(public_operations())}))  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
