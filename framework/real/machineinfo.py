"""What this machine is, as the real twin's results record it: kernel, CPU, KVM module, THP mode, cgroups.

Read from /proc and /sys, without root and without changing anything, so that config validation (which
runs before any job of a sweep) can also ask what the machine can do (``numa_nodes``, ``thp_mode``).
``provenance`` gives the columns a real run adds to its summary, all prefixed ``machine.``.
"""

import os
import re
from pathlib import Path

THP_DIR = Path("/sys/kernel/mm/transparent_hugepage")
KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")  # the vendor module that provides /dev/kvm


def _read(path: str | Path, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def selected(path: str | Path) -> str:
    """The bracketed choice of a sysfs multiple-choice file (``always [madvise] never`` -> ``madvise``)."""
    found = re.search(r"\[([^\]]+)\]", _read(path))
    return found.group(1) if found else ""


def thp_mode() -> str:
    """/sys/kernel/mm/transparent_hugepage/enabled (``always``, ``madvise``, ``never``; ``never`` without THP)."""
    return selected(THP_DIR / "enabled") or "never"


def thp_defrag() -> str:
    return selected(THP_DIR / "defrag")


def numa_nodes() -> int:
    """Online NUMA nodes (/sys/devices/system/node/node*; 1 on a kernel without NUMA)."""
    return max(1, len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))))


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return os.uname().machine


def kvm_module() -> str:
    """The loaded KVM vendor module (kvm_intel, kvm_amd, or kvm_pvm: PVM, shadow paging without hardware
    virtualization); empty if none."""
    loaded = {line.split()[0] for line in _read("/proc/modules").splitlines() if line}
    found = [m for m in KVM_MODULES if m in loaded or Path(f"/sys/module/{m}").is_dir()]
    return ",".join(found)


def kvm_paging(module: str) -> str:
    """How the secondary MMU translates: PVM has only KVM's shadow MMU; on VMX/SVM, EPT/NPT when enabled."""
    if "kvm_pvm" in module:
        return "shadow"
    for name, param in (("kvm_intel", "ept"), ("kvm_amd", "npt")):
        if name in module:
            return "ept" if _read(f"/sys/module/{name}/parameters/{param}") in ("Y", "1") else "shadow"
    return ""


def cgroup_version() -> str:
    """``v1`` when the memory controller is a cgroup v1 hierarchy (what the twin uses), ``v2`` when only the
    unified hierarchy is mounted, else ``none`` (from /proc/self/mountinfo)."""
    kinds = set()
    for line in _read("/proc/self/mountinfo").splitlines():
        fstype, _, options = line.partition(" - ")[2].split(" ", 2) if " - " in line else ("", "", "")
        if fstype == "cgroup" and "memory" in options.split()[-1].split(","):
            return "v1"
        kinds.add(fstype)
    return "v2" if "cgroup2" in kinds else "none"


def provenance() -> dict[str, str | bool]:
    """The machine's side of a real run's provenance (summary columns ``machine.*``)."""
    uname = os.uname()
    module = kvm_module()
    return {
        "machine.kernel": f"{uname.sysname} {uname.release} {uname.machine}",
        "machine.cpu": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "machine.kvm_module": module,
        "machine.kvm_paging": kvm_paging(module),
        "machine.thp": f"enabled {thp_mode()}, defrag {thp_defrag()}",
        "machine.cgroup": cgroup_version(),
        "machine.numa_nodes": str(numa_nodes()),
        # The real backend always runs as a memory-cgroup-limited host: host.memory_mib is the limit, and
        # reclaim is direct reclaim in the charging threads (no kswapd, no watermarks): docs/real.md.
        "machine.memcg_limited": True,
        "machine.reclaim": "memory cgroup limit: direct reclaim in the charging thread (try_charge_memcg, "
        "try_to_free_mem_cgroup_pages); no kswapd, no watermarks",
    }
