"""The checks a real run makes before it changes anything on the machine, one clear line per failure.

``check`` raises ``HostError`` (a ConfigError: exit status 2, no traceback) naming every check that failed,
separated by "; ": not root (alone: the other checks would fail for that reason), no /dev/kvm or no access
to it, no tracefs that is or can be mounted, no memory cgroup v1 controller, too little free memory for
the guest and a margin, too little disk for the swap file.
"""

import os
from pathlib import Path

from . import cgroup, swapfile, tracing
from .errors import HostError

MIB = 1 << 20
DEFAULT_MARGIN_BYTES = 512 * MIB  # the harness, the trace buffers, and room for everyone else


def check(guest_bytes: int, limit_bytes: int, swap_bytes: int, swap_dir: Path = swapfile.DEFAULT_DIRECTORY,
          margin_bytes: int = DEFAULT_MARGIN_BYTES) -> None:  # fmt: skip
    """Raise HostError unless this machine can run a guest of ``guest_bytes`` in a cgroup limited to
    ``limit_bytes`` with a swap file of ``swap_bytes`` in ``swap_dir``."""
    if os.geteuid() != 0:
        raise HostError("the real twin must run as root (it creates a memory cgroup, a swap file and a tracing "
                        "instance, and reads KVM's statistics): run it with sudo")  # fmt: skip
    problems = [p for p in (_kvm(), _tracefs(), _cgroup(), _memory(guest_bytes, limit_bytes, margin_bytes)) if p]
    if swap_bytes > 0:
        try:
            swapfile.check_room(Path(swap_dir), swap_bytes)
        except HostError as exc:
            problems.append(str(exc))
    if problems:
        raise HostError("; ".join(problems))


def _kvm() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm: this machine has no KVM (load kvm_intel, kvm_amd or kvm_pvm)"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"/dev/kvm cannot be opened: {exc.strerror}"
    return None


def _tracefs() -> str | None:
    """tracefs mounted, or mountable: tried at a mountpoint named like a run's, unmounted at once (a sweep
    removes it if this process is killed in between)."""
    if tracing.find_tracefs() is not None:
        return None
    if "tracefs" not in Path("/proc/filesystems").read_text().split():
        return "no tracefs: the kernel has none (CONFIG_TRACING off), so KVM's notifier events cannot be counted"
    mountpoint = Path("/tmp") / f"mmnsim-real-preflight-{os.getpid()}.tracefs"
    try:
        tracing.mount_tracefs(mountpoint)
    except HostError as exc:
        return str(exc)
    tracing.unmount_tracefs(mountpoint)
    return None


def _cgroup() -> str | None:
    try:
        cgroup.memory_hierarchy_v1()
    except HostError as exc:
        return str(exc)
    return None


def mem_available_bytes() -> int:
    """MemAvailable of /proc/meminfo (mm/show_mem.c si_mem_available): what can be allocated without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise HostError("/proc/meminfo has no MemAvailable line")


def _memory(guest_bytes: int, limit_bytes: int, margin_bytes: int) -> str | None:
    """The guest holds at most the cgroup limit in RAM (the rest is in swap)."""
    resident = min(guest_bytes, limit_bytes)
    available = mem_available_bytes()
    if available < resident + margin_bytes:
        return (f"not enough free memory: the guest needs {resident // MIB} MiB (its memory, up to the cgroup limit) "
                f"and a margin of {margin_bytes // MIB} MiB, but MemAvailable is {available // MIB} MiB")  # fmt: skip
    return None
