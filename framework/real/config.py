"""``backend=real``: the twin's own settings (``real.*``, conf/backend/real.yaml) and what it refuses.

``load_settings`` (mmnsim.settings) calls ``check`` for a backend=real config, so the command refuses a job
the machine cannot run before any job of a sweep starts: ONE line naming the key and why, exit status 2
(``ConfigError``). Nothing here needs root or changes the machine: the machine is read through
``machineinfo`` (NUMA nodes, THP mode). What the run itself finds missing (root, /dev/kvm, free memory,
disk) is ``preflight``'s, when the job starts.

Refused: whatever would need hardware the machine lacks (NUMA nodes, RDMA NICs, GPUs, VFIO devices, IOMMU
SVA), a kernel it does not run (``kernel=2008``), a mode no kernel has (``secondary.mode=unpinned``), fault
injection into the kernel's swap, and policies or keys that could only be had by changing machine-wide
settings (NUMA balancing sysctls, khugepaged and compaction knobs, watermark sysctls): the twin never
changes a global knob. Ignored, because they are the model's own and the kernel has its own answer
(docs/real.md): ``costs.*`` and the secondary MMU's ``*_ns`` costs, ``secondary.paging`` and
``flush_on_age`` (the machine's KVM is what it is: ``machine.kvm_paging`` records it), ``engine.race_window``
(the kernel's races are real), the engine's invariant checks and memory guard, ``policies.swap.batch`` and
``passes`` (the kernel sizes its own reclaim batches).
"""

from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, require, typed
from ..host import OOM, THP, SwapDevice
from ..settings import Schedule
from . import machineinfo

PIN_METHODS = ("auto", "io_uring", "mlock")  # mmnsim.real.pin.METHODS (not imported: it loads ctypes syscalls)
EAGER_RELEASE = ("mprotect", "dontneed")
DEFAULT_WATERMARK_SCALE_FACTOR, DEFAULT_MIN_FREE_KBYTES = 10, 0  # conf/host/default.yaml: the kernel's own
SUPPORTED_POLICIES = ("swap", "eager_release", "schedule")


@dataclass
class RealConfig:
    """conf/backend/real.yaml."""

    swap_directory: str  # where the run's swap file goes (a disk filesystem: not tmpfs)
    swap_priority: int  # swapon priority of the run's swap file (above the kernel's negative defaults)
    time_limit_s: float  # the whole run, setup and cleanup included; then it stops and removes everything
    request_timeout_s: float  # the longest wait for one answer of a tenant process (one batch of a tick)
    chunk_accesses: int  # accesses per vCPU per exit to the host (a multiple of 1024)
    pin_method: str  # secondary.mode=pin: io_uring (a long-term pin), mlock, or auto (io_uring, else mlock)
    eager_release: str  # policies.eager_release: mprotect (zap KVM's sptes, keep the pages) or dontneed
    trace_buffer_kb: int  # ring buffer per CPU of the run's tracing instance
    memory_margin_mib: int  # free memory preflight wants beyond what the tenants may hold

    def __post_init__(self) -> None:
        require(self.time_limit_s > 0, f"time_limit_s must be > 0, got {self.time_limit_s}")
        require(self.request_timeout_s > 0, f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        require(
            self.chunk_accesses >= 1024 and self.chunk_accesses % 1024 == 0,
            f"chunk_accesses must be a positive multiple of 1024, got {self.chunk_accesses}",
        )
        require(self.pin_method in PIN_METHODS,
                f"pin_method must be one of {', '.join(PIN_METHODS)}, got {self.pin_method!r}")  # fmt: skip
        require(self.eager_release in EAGER_RELEASE,
                f"eager_release must be one of {', '.join(EAGER_RELEASE)}, got {self.eager_release!r}")  # fmt: skip
        require(self.trace_buffer_kb >= 64, f"trace_buffer_kb must be >= 64, got {self.trace_buffer_kb}")
        require(self.memory_margin_mib >= 0, f"memory_margin_mib must be >= 0, got {self.memory_margin_mib}")


def check(settings: Any, top: dict) -> RealConfig:
    """The twin's settings, typed; ConfigError naming the first key the real twin cannot run."""
    real = typed(top.get("real") or {}, RealConfig, "real")
    _host(settings.host)
    if settings.engine.schedule is not Schedule.serial:
        raise ConfigError(f"engine.schedule={settings.engine.schedule.value}: the real twin replays a tick's tenants "
                          "one after the other (docs/real.md); engine.schedule=serial only")  # fmt: skip
    if settings.kernel.name != "6.x":
        raise ConfigError(f"kernel={settings.kernel.name}: the real twin runs this machine's kernel "
                          f"({machineinfo.provenance()['machine.kernel']}), not {settings.kernel.name}'s; "
                          "kernel=6.x only")  # fmt: skip
    _tenants(settings.tenants, top)
    _policies(settings.policies)
    return real


def _host(host: Any) -> None:
    nodes = machineinfo.numa_nodes()
    if host.numa_nodes > nodes:
        raise ConfigError(f"host.numa_nodes={host.numa_nodes}: this machine has {nodes} NUMA node"
                          f"{'s' if nodes > 1 else ''}, and the real twin runs on its own nodes")  # fmt: skip
    for key in ("swap_write_error_rate", "swap_read_error_rate"):
        if getattr(host, key):
            raise ConfigError(f"host.{key}={getattr(host, key)}: the real twin cannot inject errors into the "
                              "kernel's swap I/O; 0 only")  # fmt: skip
    if host.swap_device is not SwapDevice.file:
        raise ConfigError(f"host.swap_device={host.swap_device.value}: the real twin swaps to a file of the run "
                          "(real.swap_directory; a swap block device is the machine's); "
                          "host.swap_device=file only")  # fmt: skip
    if not host.read_stats_each_tick:
        raise ConfigError("host.read_stats_each_tick=false: the real twin reads the cgroup's memory.stat after every "
                          "tick (its time-series row), flushing the statistics reclaim reads; true only")  # fmt: skip
    if host.oom is OOM.fail:
        raise ConfigError("host.oom=fail: the kernel has no such mode (a charge the cgroup cannot reclaim for ends "
                          "in its OOM killer); host.oom=kill only")  # fmt: skip
    if (host.watermark_scale_factor, host.min_free_kbytes) != (DEFAULT_WATERMARK_SCALE_FACTOR,
                                                               DEFAULT_MIN_FREE_KBYTES):  # fmt: skip
        key = "watermark_scale_factor" if host.watermark_scale_factor != DEFAULT_WATERMARK_SCALE_FACTOR else (
            "min_free_kbytes")  # fmt: skip
        raise ConfigError(f"host.{key}={getattr(host, key)}: a machine-wide sysctl (vm.{key}) the real twin never "
                          "changes, and its memory cgroup limit has no watermarks; leave the default")  # fmt: skip
    mode = machineinfo.thp_mode()
    if host.thp is not THP.never and mode == "never":
        raise ConfigError(f"host.thp={host.thp.value}: this machine's THP mode is never "
                          f"({machineinfo.THP_DIR}/enabled), a machine-wide knob the real twin never changes; "
                          "host.thp=never only")  # fmt: skip


def _tenants(tenants: list, top: dict) -> None:
    guest = top.get("guest") or {}
    count = int(guest.get("count", 1))
    if count > 1:
        raise ConfigError(f"guest.count={count}: the real twin runs one KVM guest (KVM's notifier tracepoints name "
                          "no VM, so two guests' events could not be told apart); guest.count=1 only")  # fmt: skip
    for i, tenant in enumerate(tenants):
        is_guest = i < count
        where = "" if is_guest else f"processes[{i - count}]."
        if len(tenant.clients) > 1:
            devices = "guest.devices" if is_guest else f"{where}devices"
            raise ConfigError(f"{devices}: the real twin has no devices (no RDMA NIC, GPU or VFIO device here, and "
                              "no second client of one address space); none only")  # fmt: skip
        secondary = tenant.clients[0].secondary
        if secondary is None:
            continue
        cls, scfg = secondary
        key = f"{where}secondary"
        if not is_guest:
            raise ConfigError(f"{key}.name={cls.name}: the real twin's processes are plain tenants (one KVM guest "
                              "per run: guest); remove the process's secondary")  # fmt: skip
        if cls.name != "kvm":
            raise ConfigError(f"{key}.name={cls.name}: the real twin has no such device here (it runs a real KVM "
                              "guest: secondary=kvm, or secondary=none for a plain process)")  # fmt: skip
        mode = getattr(scfg.mode, "value", scfg.mode)
        if mode == "unpinned":
            raise ConfigError(f"{key}.mode=unpinned: the unsafe strawman exists in no kernel (KVM either pins or "
                              "subscribes to notifiers); pin or notifier only")  # fmt: skip
        if tenant.pages % 512:
            raise ConfigError(f"guest.memory_mib: the real guest's RAM is whole 2 MiB pages; give an even number "
                              f"of MiB (got {tenant.pages // 256} MiB)")  # fmt: skip


def _policies(policies: dict) -> None:
    if "swap" not in policies:
        raise ConfigError("policies: without swap the model never reclaims, but the kernel always does; the real "
                          "twin needs swap in policies (it is the kernel's own reclaim)")  # fmt: skip
    for name in policies:
        if name not in SUPPORTED_POLICIES:
            why = {
                "numa": "NUMA balancing is machine-wide (kernel.numa_balancing sysctls), and this machine has "
                f"{machineinfo.numa_nodes()} node(s)",
                "defrag": "khugepaged and compaction are machine-wide knobs (/sys/kernel/mm/transparent_hugepage/"
                "khugepaged, vm.compaction_proactiveness); MADV_COLLAPSE would be the process-local step "
                "(docs/real.md)",
            }.get(name, "it has no counterpart in the real twin")
            raise ConfigError(f"policies.{name}: {why}; the real twin never changes global knobs")
    swap = policies["swap"][1]
    mode, young = (getattr(swap.mode, "value", swap.mode), getattr(swap.young_op, "value", swap.young_op))
    if mode != "lru":
        raise ConfigError(f"policies.swap.mode={mode}: the kernel reclaims from its LRU lists; mode=lru only")
    if young != "clear_flush_young":
        raise ConfigError(f"policies.swap.young_op={young}: the kernel's reclaim ages with clear_flush_young "
                          "(folio_referenced_one); young_op=clear_flush_young only")  # fmt: skip
    if "schedule" in policies and policies["schedule"][1].events:
        raise ConfigError("policies.schedule.events: moving vCPUs between NUMA nodes needs nodes this machine "
                          "lacks; events=[] only")  # fmt: skip
