"""The three kinds of plugin component and what they have in common.

A component class has a ``name`` (its YAML file's name under ``conf/<kind dir>/``) and a ``Config``
dataclass declaring the keys of that file; a plugin module returns its classes from the
``register_components`` hook. Component instances are registered with the simulation's plugin manager, so
their ``@hookimpl`` methods (``host_tick``, ``reclaim``, ``collect_metrics``) are called each run.

* ``SecondaryMMU`` (``mmnsim.secondary``): a device that maps an mm through its own table.
* ``HostPolicy`` (here): host-side memory management run on each tick (swap, NUMA balancing, ...).
* ``Workload`` (``mmnsim.workload``): the page numbers a client accesses.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from .metrics import Metric

if TYPE_CHECKING:
    from .simulation import Simulation


class Component:
    kind: ClassVar[str] = ""  # "secondary", "policy" or "workload"
    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    # The metrics this component reports beyond the framework's, one ``Metric`` each (``mmnsim.metrics``).
    declared_metrics: ClassVar[tuple[Metric, ...]] = ()
    # Bytes it allocates per page of its region beyond the framework's own tables (a workload's sampling
    # table, a device's extra per-page state), at their peak: the memory guard (memory.py) counts them.
    memory_per_page: ClassVar[int] = 0


class HostPolicy(Component):
    """A host memory-management policy. Implement any of ``host_tick``, ``reclaim``, ``collect_metrics``."""

    kind = "policy"
    # Kernel features it needs (keys of ``mmnsim.kernelconf.FEATURES``: "thp", "compaction",
    # "numa_balancing"): under a kernel without one, a config naming the policy stops before any job.
    kernel_features: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sim: "Simulation", cfg: Any):
        self.sim = sim
        self.cfg = cfg


class Mode(StrEnum):
    """How a secondary MMU keeps its translations valid."""

    pin = "pin"  # get_user_pages(FOLL_LONGTERM): frames stay pinned until teardown
    notifier = "notifier"  # no long-term pin: subscribe to the mm's notifier chain
    # The unsafe strawman: map without pinning and without subscribing (the page reference is dropped once
    # the entry is installed, the entry kept). Reclaim and migration then free or move frames the device
    # still reaches; the invariant checks count what that does. Why KVM pinned before notifiers existed.
    unpinned = "unpinned"


@dataclass
class SecondaryConfig:
    """Keys every ``conf/secondary/*.yaml`` has; a plugin's own Config extends it."""

    name: str
    mode: Mode
    fault_ns: float  # one secondary fault, beyond the primary fault path (exit, handling, device work)


@dataclass
class NoConfig:
    """For components without settings."""
