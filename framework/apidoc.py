"""docs/api.md: the plugin API's reference, generated from its signatures and docstrings.

    python -m mmnsim.apidoc > docs/api.md

Covers what ``mmnsim`` exports, the simulation's services, tenants and clients a plugin reaches through
``sim``, the host's read-only figures (``sim.host``), an mm's operations and THP handling. A test keeps the
file current: after changing a public docstring or signature, run the command again.
"""

import inspect
from collections.abc import Callable

import mmnsim
from mmnsim.host import Host
from mmnsim.simulation import Client

# Methods left out: the run's own machinery, not for plugins.
INTERNAL = {"Simulation": {"step", "run", "check_invariants", "report_violations", "timeseries_rows", "components",
                           "metrics", "fraction_done", "call_hook"},
            "MM": {"check_range"}, "Host": {"ram"},
            "SecondaryMMU": {"serves_fast"}}  # fmt: skip
FOREIGN = "pluggy's marker for the project `mmnsim` (decorate hook implementations and specifications)"
# Exports without a docstring of their own (values, foreign objects), described here.
DESCRIBED = {
    "hookimpl": FOREIGN,
    "hookspec": FOREIGN,
    "AHEAD": "Iterations between a `prefetch` and the load it prepares in a compiled loop: a DRAM latency's worth "
    "of a small loop's work (16).",
    "U": "`numpy.uint64`: an index cast with `U(i)` skips numba's negative-index wrap-around, which costs more than "
    "a random load in a hot loop; only for an `i` known to be >= 0.",
    "REGISTRATION_METRICS": "The metrics of a device registration (declared once for rdma, gpu and vfio): list "
    "them in a plugin's `declared_metrics`.",
    "TRACE_FORMATS": "The trace formats `read_trace` reads (`mmnsim-trace info` tells a file's).",
    "SEQ": "Index in `SecondaryMMU.state` of the invalidation sequence the fault path snapshots and checks "
    "(mmu_invalidate_seq; an interval subscriber's invalidate_seq): `end_invalidate`, `bump_seq` and `set_seq` "
    "move it.",
    "IN_PROGRESS": "Index in `SecondaryMMU.state` of the count of invalidations in progress "
    "(mmu_invalidate_in_progress): `begin_invalidate` raises it, `end_invalidate` lowers it; a fault retries while "
    "it is non-zero over its page.",
    "FAULT_BLOCK": "Index in `SecondaryMMU.state` of the pages a device fault maps around the faulting page "
    "(`set_fault_block` sets it; 0 or 1: the page alone).",
    "prefetch": "`prefetch(array, index)`, inside a `kernel`: ask the CPU to start loading `array[index]` into its "
    "caches (a hint: never faults, no result), for a loop whose random loads are known some iterations ahead.",
}


def _members(cls: type) -> list[tuple[str, object]]:
    """A class's own public methods and properties, in source order (those a plugin does not call left out)."""
    skip = INTERNAL.get(cls.__name__, set())
    public = [(n, v) for n, v in vars(cls).items() if not n.startswith("_") and n not in skip]
    return [(n, v) for n, v in public if callable(v) or isinstance(v, property | classmethod)]


def _signature(name: str, obj: object) -> str:
    func = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    if isinstance(obj, property):
        return f"{name}  (property)"
    try:
        return f"{name}{inspect.signature(func)}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return name


def _doc(obj: object) -> str:
    func = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    return inspect.cleandoc(func.__doc__ or "").strip()  # type: ignore[union-attr]


def _entry(title: str, obj: object, level: str = "###") -> list[str]:
    lines = [f"{level} `{_signature(title, obj) if not isinstance(obj, type) else title}`", ""]
    doc = _doc(obj)
    if doc:
        lines += [doc, ""]
    return lines


def _class(prefix: str, cls: type) -> list[str]:
    lines = _entry(f"{prefix}{cls.__name__}", cls)
    for name, member in _members(cls):
        lines += _entry(f"{prefix}{cls.__name__}.{name}", member, "####")
    return lines


def markdown() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python -m mmnsim.apidoc > docs/api.md` (a test keeps it current).",
        "The guide is [plugins.md](plugins.md); the hooks' contracts are in `framework/hookspecs.py`.",
        "",
        "## `mmnsim`",
        "",
    ]
    for name in sorted(mmnsim.__all__, key=str.lower):
        obj = getattr(mmnsim, name)
        if name in DESCRIBED:
            lines += [f"### `mmnsim.{name}`", "", DESCRIBED[name], ""]
        elif inspect.ismodule(obj):
            lines += [f"### `mmnsim.{name}` (module)", "", inspect.cleandoc(obj.__doc__ or "").split("\n\n")[0], ""]
        else:
            lines += _class("mmnsim.", obj) if isinstance(obj, type) else _entry(f"mmnsim.{name}", obj)
    sections: list[tuple[str, list[tuple[str, Callable | type]]]] = [
        ("A client (`tenant.clients`, `secondary.client`)", [("", Client)]),
        ("The host's figures (`sim.host`)", [("", Host)]),
    ]
    for title, items in sections:
        lines += [f"## {title}", ""]
        for name, obj in items:
            lines += _class("", obj) if isinstance(obj, type) else _entry(name, obj)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
