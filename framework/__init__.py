"""mmnsim: a simulator of the Linux kernel's mmu_notifier mechanism.

The public API for plugins is what this module exports, plus the array layouts in ``mmnsim.pagebits``.
Built-in plugins import nothing else (a test checks it), so what they need is exported here.
"""

from pathlib import Path

from hydra.core.plugins import Plugins
from omegaconf import OmegaConf

from . import _numba_cache, pcg64  # noqa: F401  (_numba_cache first: it sets numba's cache directory)
from .arguments import OperationError
from .compaction import compact
from .components import HostPolicy, Mode, NoConfig, SecondaryConfig
from .config import ConfigError, require
from .costs import walk_refs
from .discovery import PluginConfSearchPath
from .hookspecs import hookimpl, hookspec
from .host import Watermarks
from .kernel import AHEAD, U, kernel, prefetch
from .lru import (
    LruSizes,
    Shrunk,
    inactive_is_low,
    lru_sizes,
    lru_stats,
    may_deactivate,
    shrink_active,
    shrink_inactive,
)
from .metrics import REGISTRATION_METRICS, Metric
from .migrate import migrate
from .mm import MM
from .notifier import Event, NotifierRange, PluginError, expand_ranges, single_pages, sum_per_range
from .reclaim import Batch, charge_reclaim, folio_pages, referenced, scan_frames, shrink_batch, swap_out
from .secondary import FAULT_BLOCK, IN_PROGRESS, SEQ, SecondaryMMU, device_region
from .share import is_shared, merge_pages, mergeable, sharing
from .simulation import Simulation, Tenant
from .thp import collapse as collapse_huge_page
from .thp import split_huge_pages
from .traces import FORMATS as TRACE_FORMATS
from .traces import Collapser, Densifier, TraceError, probe, read_trace
from .workingset import Folios, MMCounters, lru_folios
from .workload import Workload, WorkloadConfig

__version__ = "0.1.0"

DATA = Path(__file__).parent / "data"


def data_path(name: str) -> str:
    """The absolute path of a data file shipped with mmnsim (``traces/sqlite3.mmt.zst``, ...)."""
    return str(DATA / name)


# Installed plugin packages' conf/ folders join the config groups, wherever configs are composed.
Plugins.instance().register(PluginConfSearchPath)

# Config files name shipped data as ${mmnsim_data:traces/NAME}, wherever mmnsim is installed.
OmegaConf.register_new_resolver("mmnsim_data", data_path, replace=True)

__all__ = [
    "AHEAD",
    "FAULT_BLOCK",
    "IN_PROGRESS",
    "SEQ",
    "REGISTRATION_METRICS",
    "TRACE_FORMATS",
    "U",
    "Collapser",
    "Densifier",
    "TraceError",
    "collapse_huge_page",
    "compact",
    "kernel",
    "pcg64",
    "prefetch",
    "probe",
    "read_trace",
    "split_huge_pages",
    "MM",
    "LruSizes",
    "MMCounters",
    "Metric",
    "ConfigError",
    "Event",
    "Folios",
    "HostPolicy",
    "Mode",
    "NoConfig",
    "NotifierRange",
    "OperationError",
    "PluginError",
    "Batch",
    "SecondaryConfig",
    "SecondaryMMU",
    "Shrunk",
    "Simulation",
    "Tenant",
    "Watermarks",
    "Workload",
    "WorkloadConfig",
    "data_path",
    "charge_reclaim",
    "device_region",
    "expand_ranges",
    "folio_pages",
    "hookimpl",
    "hookspec",
    "inactive_is_low",
    "is_shared",
    "lru_folios",
    "lru_sizes",
    "lru_stats",
    "may_deactivate",
    "merge_pages",
    "mergeable",
    "migrate",
    "referenced",
    "require",
    "scan_frames",
    "shrink_batch",
    "sharing",
    "shrink_active",
    "shrink_inactive",
    "single_pages",
    "sum_per_range",
    "swap_out",
    "walk_refs",
]
