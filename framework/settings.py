"""A run's configuration, checked: every value typed and in range, every plugin name known, and the
scenario able to fit in the host. Nothing is allocated here, so the command line can check every
combination of a sweep before any job starts.
"""

import functools
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import memory
from .components import Component
from .config import SOURCES, ConfigError, plugin_raised, require, typed
from .costs import Costs
from .discovery import CONF_PATH_ENV, KIND_DIRS, Registry
from .host import MAX_MIB, MIB_PAGES, OOM, THP, HostConfig
from .kernelconf import TODAY, KernelConfig, missing_features
from .workload import WorkloadConfig

NO_SECONDARY = "none"
MAX_VCPUS = 4096  # KVM_MAX_VCPUS on x86 with CONFIG_MAXSMP (arch/x86/include/asm/kvm_host.h)
MAX_TENANTS = 4096  # guest.count: each guest is built (and checked here) one by one
TOP_LEVEL = ("host", "secondary", "workload", "costs", "policies", "seed", "guest", "processes", "engine",
             "report", "sensitivity", "kernel", "backend", "real")  # fmt: skip
# ("report" and "sensitivity" are read by mmnsim-experiment, not by the simulation.)
# backend (conf/backend/): sim, the simulator, or real, the real twin on this machine's kernel (docs/real.md),
# whose own settings are the "real" node.
BACKENDS = ("sim", "real")


@dataclass
class GuestConfig:
    memory_mib: int
    vcpus: int
    count: int  # identical guests, each its own mm, secondary MMU and workload stream
    vcpu_nodes: list[int] | None  # NUMA node of each vCPU; null = guest i entirely on node i % nodes
    devices: list[dict[str, Any]]  # more clients of each guest's memory: DeviceConfig mappings
    oom_score_adj: int  # /proc/PID/oom_score_adj of each guest's VMM: -1000 (never kill) to 1000
    thp: bool  # the guest kernel maps its memory with 2 MiB pages (its own THP); sets the TLB reach
    madvise_hugepage: bool  # the VMM madvises guest RAM MADV_HUGEPAGE (QEMU's ram_block_add does)

    def __post_init__(self) -> None:
        _check_size(self.memory_mib, self.vcpus)
        require(1 <= self.count <= MAX_TENANTS, f"count must be in [1, {MAX_TENANTS}], got {self.count}")
        _check_oom_score_adj(self.oom_score_adj)


@dataclass
class DeviceConfig:
    """Another client of an address space: a device mapping it through its own secondary MMU, or with
    ``secondary: {name: none}`` more threads of the process itself (a VMM's I/O threads touching guest
    memory)."""

    secondary: dict[str, Any]  # e.g. {name: rdma, mode: notifier}; unset keys from its YAML file
    workload: dict[str, Any]  # e.g. {name: zipf, accesses: 1000000}; unset keys from its YAML file
    node: int = 0  # the NUMA node the device is attached to
    accesses_per_tick: int = 0  # its own rate; 0: engine.accesses_per_tick

    def __post_init__(self) -> None:
        require(self.accesses_per_tick >= 0, f"accesses_per_tick must be >= 0, got {self.accesses_per_tick}")


@dataclass
class ProcessConfig:
    """Another address space on the host: a process, or with a secondary MMU a guest or device user."""

    name: str
    memory_mib: int
    node: int  # NUMA node its CPUs (or vCPUs) run on
    workload: dict[str, Any]  # workload settings; unset keys come from conf/workload/<name>.yaml
    secondary: dict[str, Any] | None = None  # e.g. {name: kvm}; unset keys from conf/secondary/<name>.yaml
    vcpus: int = 1
    devices: list[dict[str, Any]] = field(default_factory=list)
    oom_score_adj: int = 0  # /proc/PID/oom_score_adj: -1000 (never kill) to 1000
    guest_thp: bool = True  # with a kvm secondary: the guest inside maps its memory with 2 MiB pages
    madvise_hugepage: bool = False  # its memory is MADV_HUGEPAGE (a guest: QEMU madvises guest RAM)

    def __post_init__(self) -> None:
        _check_size(self.memory_mib, self.vcpus)
        _check_oom_score_adj(self.oom_score_adj)


class Schedule(StrEnum):
    """How the clients of a tick share the machine's CPUs."""

    concurrent = "concurrent"  # each client on its own CPUs at once: the tick lasts as long as the slowest
    serial = "serial"  # one after the other, as the real twin replays a tick: the tick is their sum, and no
    # other client's CPU is in guest mode while one runs


@dataclass(frozen=True)  # the checks' switches: a plugin cannot turn them off (``sim.engine``)
class EngineConfig:
    accesses_per_tick: int  # accesses each client issues per tick
    check_invariants: bool
    check_accesses: bool  # also count each access through a secondary entry whose frame is not the page's
    stop_on_violation: bool  # raise at the first violated invariant instead of counting on
    timeseries: bool
    allow_violations: bool = False  # exit 0 even if an invariant was violated (the mmnsim command)
    race_window: float = 0.0  # chance that a secondary fault sleeps while the host invalidates; 0: never
    max_memory_gib: float | None = None  # the memory guard's limit; null: what the machine has (MemAvailable)
    schedule: Schedule = Schedule.concurrent

    def __post_init__(self) -> None:
        require(self.accesses_per_tick >= 1, f"accesses_per_tick must be >= 1, got {self.accesses_per_tick}")
        require(0 <= self.race_window <= 1, f"race_window must be in [0, 1], got {self.race_window}")
        require(self.max_memory_gib is None or self.max_memory_gib > 0,
                f"max_memory_gib must be > 0 or null, got {self.max_memory_gib}")  # fmt: skip


@dataclass
class ClientSpec:
    """One client of an address space: its CPUs, or a device through a secondary MMU."""

    vcpu_nodes: np.ndarray  # the NUMA node of each of its CPUs (or of the device)
    workload: tuple[type[Component], WorkloadConfig]
    secondary: tuple[type[Component], Any] | None
    region: tuple[int, int]  # the pages [start, end) of the mm it accesses
    device_pages: int = 0  # device-private memory its secondary MMU brings (a GPU's VRAM)
    accesses_per_tick: int = 0  # 0: engine.accesses_per_tick


@dataclass
class TenantSpec:
    """One address space of the scenario, before it exists."""

    name: str
    pages: int
    clients: list[ClientSpec]
    oom_score_adj: int = 0
    guest_thp: bool = False  # a guest (KVM) whose own kernel maps its memory with 2 MiB pages
    madvise_hugepage: bool = False  # MADV_HUGEPAGE over all of it (host.thp=madvise; direct compaction)


@dataclass
class Settings:
    seed: int
    host: HostConfig
    engine: EngineConfig
    costs: Costs
    tenants: list[TenantSpec]
    policies: dict[str, tuple[type[Component], Any]] = field(default_factory=dict)
    kernel: KernelConfig = field(default_factory=lambda: TODAY)
    backend: str = "sim"  # sim or real (conf/backend/)
    real: Any = None  # backend=real: the twin's settings (mmnsim.real.config.RealConfig)


def load_settings(cfg: DictConfig, registry: Registry) -> Settings:
    """Check ``cfg`` and return it typed; raise ConfigError naming the key at fault."""
    try:
        return _load_settings(cfg, registry)
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve (``seed=${nosuch:x}``)
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from None


def _load_settings(cfg: DictConfig, registry: Registry) -> Settings:
    top = {k: v for k, v in cfg.items() if k != "hydra"}
    unknown = [k for k in top if k not in TOP_LEVEL]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; accepted keys at top level: {', '.join(TOP_LEVEL)}")
    backend = top.get("backend", "sim")
    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown backend {backend!r}; accepted: sim (the simulator), real (the real twin "
                          "on this machine's kernel: docs/real.md)")  # fmt: skip
    if top.get("real") is not None and backend != "real":
        raise ConfigError("real: the real twin's settings apply only with backend=real")
    seed = top.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    host = typed(top.get("host"), HostConfig, "host")
    engine = typed(top.get("engine"), EngineConfig, "engine")
    costs = typed(top.get("costs"), Costs, "costs")
    guest = typed(top.get("guest"), GuestConfig, "guest")
    kernel = typed(top["kernel"], KernelConfig, "kernel") if top.get("kernel") is not None else TODAY
    _check_profile(top.get("costs"), top.get("secondary"))
    secondary = _secondary(top.get("secondary"), registry)
    workload = _workload(top.get("workload"), "workload", registry)
    policies = {
        name: _component("policy", name, node, f"policies.{name}", registry)
        for name, node in (top.get("policies") or {}).items()
    }
    if host.thp is not THP.never:
        _require_kernel(kernel, ("thp",), "host.thp", f"{host.thp.value!r}", "set host.thp=never")
    _require_kernel(kernel, ("thp",) if guest.madvise_hugepage else (), "guest.madvise_hugepage", "MADV_HUGEPAGE",
                    "set guest.madvise_hugepage=false")  # fmt: skip
    for name, (cls, _) in policies.items():
        _require_kernel(kernel, cls.kernel_features, f"policies.{name}", "this policy",
                        "leave it out of policies")  # fmt: skip

    tenants = []
    pages = guest.memory_mib * MIB_PAGES
    for i in range(guest.count):
        main = _client(_guest_nodes(guest, i, host), workload, secondary, pages, "secondary")
        devices = _devices(guest.devices, "guest.devices", pages, host, registry)
        # QEMU madvises guest RAM MADV_HUGEPAGE (ram_block_add -> qemu_madvise(QEMU_MADV_HUGEPAGE)).
        tenants.append(TenantSpec(f"guest{i}", pages, [main, *devices], guest.oom_score_adj, guest.thp,
                                  guest.madvise_hugepage))  # fmt: skip
    if not isinstance(top.get("processes") or [], ListConfig | list):
        raise ConfigError(f"processes: expected a list of processes, got {top.get('processes')!r}")
    for i, node in enumerate(top.get("processes") or []):
        key = f"processes[{i}]"
        proc = typed(node, ProcessConfig, key)
        _check_node(proc.node, host, f"{key}.node")
        _require_kernel(kernel, ("thp",) if proc.madvise_hugepage else (), f"{key}.madvise_hugepage",
                        "MADV_HUGEPAGE", f"set {key}.madvise_hugepage=false")  # fmt: skip
        pages = proc.memory_mib * MIB_PAGES
        wl = _workload(proc.workload, f"{key}.workload", registry)
        sec = _secondary(proc.secondary, registry, f"{key}.secondary") if proc.secondary else None
        main = _client(np.full(proc.vcpus, proc.node), wl, sec, pages, f"{key}.secondary")
        devices = _devices(proc.devices, f"{key}.devices", pages, host, registry)
        tenants.append(TenantSpec(proc.name, pages, [main, *devices], proc.oom_score_adj, proc.guest_thp,
                                  proc.madvise_hugepage))  # fmt: skip
    names = [t.name for t in tenants]
    if len(set(names)) != len(names):
        raise ConfigError(f"processes: names must be unique and differ from guest0..guestN; got {names}")

    need = sum(t.pages for t in tenants)
    have = (host.memory_mib + host.swap_mib) * MIB_PAGES
    if need > have and host.oom is OOM.fail:  # with the OOM killer, outgrowing RAM and swap is a scenario
        raise ConfigError(
            f"guest.memory_mib: the tenants need {need // MIB_PAGES} MiB but host.memory_mib + host.swap_mib "
            f"hold only {have // MIB_PAGES} MiB and host.oom=fail; shrink the guests, add RAM or swap, or let "
            "the OOM killer act (host.oom=kill)"
        )
    settings = Settings(seed, host, engine, costs, tenants, policies, kernel, backend)
    if backend == "real":  # what the machine cannot run, refused now; imported only for it (docs/real.md)
        from .real.config import check as check_real

        settings.real = check_real(settings, top)
        return settings
    memory.check(settings)  # before anything is allocated: stop rather than swap or fail mid-build
    return settings


def _require_kernel(kernel: KernelConfig, features: tuple[str, ...], key: str, what: str, fix: str) -> None:
    """Stop a config that asks the simulated kernel for what it does not have (kernel=2008 has no THP,
    compaction or NUMA balancing), naming the key, what is missing and since when."""
    missing = missing_features(kernel, features)
    if missing:
        raise ConfigError(f"{key}: {what} needs {' and '.join(missing)}, which kernel={kernel.name} does not have; "
                          f"{fix}, or choose a later kernel (kernel=6.1 or 6.x)")  # fmt: skip


def _check_size(memory_mib: int, vcpus: int) -> None:
    require(memory_mib > 0, f"memory_mib must be > 0, got {memory_mib}")
    require(memory_mib <= MAX_MIB, f"memory_mib must be <= {MAX_MIB} (page numbers are int32), got {memory_mib}")
    require(vcpus >= 1, f"vcpus must be >= 1, got {vcpus}")
    require(vcpus <= MAX_VCPUS, f"vcpus must be <= {MAX_VCPUS} (KVM_MAX_VCPUS), got {vcpus}")


def _check_oom_score_adj(adj: int) -> None:
    require(-1000 <= adj <= 1000, f"oom_score_adj must be in [-1000, 1000] as in the kernel, got {adj}")


def _client(nodes: np.ndarray, workload, secondary, pages: int, key: str) -> ClientSpec:
    if secondary is None:
        return ClientSpec(nodes, workload, None, (0, pages))
    cls, scfg = secondary
    try:
        region = cls.region_of(scfg, pages)
        device_pages = cls.device_memory_pages(scfg)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (a plugin's own code)
        raise plugin_raised(f"secondary MMU '{cls.name}'", "region_of or device_memory_pages", exc, key) from None
    region = _checked_region(region, pages, f"{key}: secondary MMU '{cls.name}'")
    if isinstance(device_pages, bool) or not isinstance(device_pages, int | np.integer) or device_pages < 0:
        raise ConfigError(f"{key}: secondary MMU '{cls.name}' returned {device_pages!r} from device_memory_pages; "
                          "expected a number of pages >= 0")  # fmt: skip
    return ClientSpec(nodes, workload, secondary, region, int(device_pages))


def _checked_region(region: Any, pages: int, who: str) -> tuple[int, int]:
    """What a plugin's ``region_of`` returned, if it is a range [start, end) of the mm's pages."""
    try:
        start, end = (int(x) for x in region)
        ok = all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in region)
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= start < end <= pages:
        raise ConfigError(f"{who} returned {region!r} from region_of; expected (start, end) with 0 <= start < end "
                          f"<= {pages}, the mm's pages")  # fmt: skip
    return start, end


def _devices(nodes: list, key: str, pages: int, host: HostConfig, registry: Registry) -> list[ClientSpec]:
    out = []
    for j, node in enumerate(nodes or []):
        where = f"{key}[{j}]"
        dev = typed(node, DeviceConfig, where)
        _check_node(dev.node, host, f"{where}.node")
        sec = _secondary(dev.secondary, registry, f"{where}.secondary")  # none: the process's own threads
        wl = _workload(dev.workload, f"{where}.workload", registry)
        client = _client(np.array([dev.node]), wl, sec, pages, f"{where}.secondary")
        client.accesses_per_tick = dev.accesses_per_tick
        out.append(client)
    return out


def _check_node(node: int, host: HostConfig, key: str) -> None:
    if not 0 <= node < host.numa_nodes:
        raise ConfigError(f"{key}: {node} is outside 0..{host.numa_nodes - 1} (host.numa_nodes={host.numa_nodes})")


def _component(kind: str, name: str, node: Any, key: str, registry: Registry) -> tuple[type[Component], Any]:
    cls = registry.get(kind, name, key)
    try:
        return cls, typed(node, cls.Config, key)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 (any error of a plugin's Config is that plugin's)
        raise plugin_raised(f"{kind} '{name}'", f"{cls.Config.__name__}.__post_init__", exc, key) from None


def _check_profile(costs: Any, secondary: Any) -> None:
    """A measured cost profile (``mmnsim-calibrate``, conf/costs/NAME.yaml) sets KVM's costs (``secondary.*``)
    besides the host's: its ``sources.profile.secondaries`` names the secondaries it may be used with."""
    profile = ((costs or {}).get(SOURCES) or {}).get("profile") or {}
    allowed = list(profile.get("secondaries") or [])
    name = (secondary or {}).get("name", "none")
    if allowed and name not in allowed:
        raise ConfigError(f"costs={profile.get('name')}: the profile sets {allowed[0]}'s measured costs "
                          f"(secondary.*) too; use it with secondary={' or '.join(allowed)}, not {name}")  # fmt: skip


def _secondary(node: Any, registry: Registry, key: str = "secondary") -> tuple[type[Component], Any] | None:
    name = node.get("name") if isinstance(node, DictConfig | dict) else None
    if name is None:
        raise ConfigError(f"{key}.name: missing; choose one with secondary=NAME")
    if name == NO_SECONDARY:
        return None
    return _component("secondary", name, _with_defaults(node, "secondary", name, key, registry), key, registry)


def _workload(node: Any, key: str, registry: Registry) -> tuple[type[Component], WorkloadConfig]:
    name = node.get("name") if isinstance(node, DictConfig | dict) else None
    if name is None:
        raise ConfigError(f"{key}.name: missing; choose a workload with workload=NAME")
    return _component("workload", name, _with_defaults(node, "workload", name, key, registry), key, registry)


def _with_defaults(node: Any, kind: str, name: str, key: str, registry: Registry) -> Any:
    """Settings given inline (``processes[i].secondary``, ``guest.devices[j].workload``) get the unset keys
    from the plugin's YAML file, composed as ``secondary=NAME`` composes it: built in or from an installed
    plugin package's ``conf/`` folder, its ``defaults`` list followed (``faulty`` extends ``kvm``)."""
    if isinstance(node, DictConfig):  # composed by Hydra from the config group: complete already
        return node
    registry.get(kind, name, key)
    return OmegaConf.merge(group_defaults(KIND_DIRS[kind], name, os.environ.get(CONF_PATH_ENV, "")), node)


def _guest_nodes(guest: GuestConfig, index: int, host: HostConfig) -> np.ndarray:
    nodes = host.numa_nodes
    if guest.vcpu_nodes is None:
        return np.full(guest.vcpus, index % nodes)
    placed = np.asarray(guest.vcpu_nodes, dtype=np.int64)
    if placed.size == 0 or placed.min() < 0 or placed.max() >= nodes:
        raise ConfigError(
            f"guest.vcpu_nodes: {guest.vcpu_nodes} names a node outside 0..{nodes - 1} (host.numa_nodes={nodes})"
        )
    return np.resize(placed, guest.vcpus)


@functools.cache
def group_defaults(kind_dir: str, name: str, conf_path: str = "") -> DictConfig:
    """The option ``name`` of config group ``kind_dir`` as Hydra composes it on the mmnsim config search path
    (built-in conf, installed plugin packages' conf folders, ``MMNSIM_CONF_PATH``, whose value ``conf_path``
    keys the cache); empty if no YAML file has it (a component registered in a notebook). Read-only."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl  # as Hydra's own compose does
    from hydra._internal.utils import create_config_search_path
    from hydra.errors import MissingConfigException
    from hydra.types import RunMode

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path("pkg://mmnsim.conf"))
    try:
        composed = loader.load_configuration(config_name=f"{kind_dir}/{name}", overrides=[], run_mode=RunMode.RUN)
    except MissingConfigException:
        composed = OmegaConf.create({kind_dir: {}})
    node = composed.get(kind_dir) or OmegaConf.create({})
    OmegaConf.set_readonly(node, True)
    return node
