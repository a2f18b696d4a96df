"""The run's swap file: ``host.swap_mib`` as a swap file created for the run, swapped on, and removed.

The file is ``<directory>/<run name>.swap`` (default directory /var/tmp/mmnsim-real, which must be on a
filesystem that can hold a swap file: ext4, xfs, f2fs, ...; not tmpfs, ramfs or overlayfs), mode 0600. It
is allocated with fallocate (mm/swapfile.c setup_swap_extents accepts unwritten extents through
fs/iomap/swapfile.c iomap_swapfile_iter; where the filesystem refuses them, swapon fails with EINVAL
and the file is written with zeros instead), given a swap header (include/linux/swap.h ``union
swap_header``: version 1, last_page, and the "SWAPSPACE2" signature at the end of the first page, as
mm/swapfile.c read_swap_header checks), and switched on with swapon(2) at a priority
(SWAP_FLAG_PREFER).

Swap is the machine's, not the cgroup's: while the file is on, any process's reclaimed pages may go to it
(the highest priority first), and the run's tenants may use other swap the machine has. The run's cgroup
bounds its tenants' swap with memsw (``cgroup.MemoryCgroup.create``); /proc/vmstat pswpin/pswpout count
all swap traffic (see ``counters``). zswap is off on the project's machines; zram devices are left alone.
``swapoff`` reads back whatever is still in the file, so the run removes it after its tenants exit.
"""

import ctypes
import errno
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from . import mounts
from .errors import HostError

DEFAULT_DIRECTORY = Path("/var/tmp/mmnsim-real")
DEFAULT_PRIORITY = 10  # above the -2, -3, ... the kernel gives swap areas switched on without one
RESERVE_BYTES = 1 << 30  # the disk keeps at least this much free besides the swap file (and 5% of its size)
PAGE = os.sysconf("SC_PAGE_SIZE")
MIN_PAGES = 10  # mkswap's minimum; the kernel needs a header page and at least one slot
SWAP_FLAG_PREFER = 0x8000  # include/linux/swap.h
SWAP_FLAG_PRIO_MASK = 0x7FFF
NO_SWAP_FILESYSTEMS = ("tmpfs", "ramfs", "overlay", "squashfs", "proc", "sysfs", "devtmpfs")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class SwapArea:
    """One line of /proc/swaps (mm/swapfile.c swap_show): sizes in KiB."""

    path: Path
    type: str  # "file" or "partition"
    size_kib: int
    used_kib: int
    priority: int


def active_swaps() -> list[SwapArea]:
    """Every swap area the machine has on."""
    out = []
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        name, kind, size, used, prio = line.rsplit(None, 4)
        out.append(SwapArea(Path(mounts.unescape(name.strip())), kind, int(size), int(used), int(prio)))
    return out


def check_room(directory: Path, size_bytes: int, reserve_bytes: int = RESERVE_BYTES) -> None:
    """HostError unless ``directory``'s filesystem can hold a swap file of ``size_bytes`` and keep
    ``reserve_bytes`` and 5% of its size free."""
    fs = mounts.mount_of(directory)
    if fs.fstype in NO_SWAP_FILESYSTEMS:
        raise HostError(f"swap directory {directory} is on {fs.fstype} ({fs.mountpoint}), which cannot hold a swap "
                        "file: choose a directory on a disk filesystem (ext4, xfs)")  # fmt: skip
    existing = Path(directory)
    while not existing.exists():
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    keep = max(reserve_bytes, usage.total // 20)
    if usage.free - size_bytes < keep:
        raise HostError(f"not enough disk for a {size_bytes >> 20} MiB swap file in {directory}: "
                        f"{usage.free >> 20} MiB free, and {keep >> 20} MiB must stay free")  # fmt: skip


@dataclass
class SwapFile:
    """A swap file of the run, switched on."""

    path: Path
    size_bytes: int
    priority: int

    @classmethod
    def create(cls, name: str, size_bytes: int, directory: Path = DEFAULT_DIRECTORY,
               priority: int = DEFAULT_PRIORITY, reserve_bytes: int = RESERVE_BYTES) -> "SwapFile":  # fmt: skip
        """Create ``<directory>/<name>.swap`` of ``size_bytes`` (rounded down to pages) and swap it on."""
        size_bytes -= size_bytes % PAGE
        if size_bytes < MIN_PAGES * PAGE:
            raise HostError(f"swap file of {size_bytes} bytes is too small: at least {MIN_PAGES * PAGE} bytes")
        if not 0 <= priority <= SWAP_FLAG_PRIO_MASK:
            raise HostError(f"swap priority {priority} is out of range: 0 to {SWAP_FLAG_PRIO_MASK}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        check_room(directory, size_bytes, reserve_bytes)
        swap = cls(directory / f"{name}.swap", size_bytes, priority)
        try:
            swap._write(zero_fill=False)
            try:
                swap._swapon()
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                swap._write(zero_fill=True)  # the filesystem refused fallocated (unwritten) extents
                swap._swapon()
        except BaseException:
            remove_swapfile(swap.path)
            raise
        return swap

    def area(self) -> SwapArea | None:
        """This file's line of /proc/swaps, or None if it is not on."""
        return next((a for a in active_swaps() if a.path == self.path), None)

    def remove(self) -> None:
        remove_swapfile(self.path)

    def _write(self, zero_fill: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if zero_fill else os.O_EXCL)
        fd = os.open(self.path, flags, 0o600)
        try:
            if zero_fill:
                chunk = bytes(1 << 20)
                for offset in range(0, self.size_bytes, len(chunk)):
                    os.pwrite(fd, chunk[: self.size_bytes - offset], offset)
            else:
                os.posix_fallocate(fd, 0, self.size_bytes)
            os.pwrite(fd, swap_header(self.size_bytes // PAGE), 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _swapon(self) -> None:
        flags = SWAP_FLAG_PREFER | (self.priority & SWAP_FLAG_PRIO_MASK)
        if _libc.swapon(os.fsencode(self.path), flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"swapon {self.path}: {os.strerror(err)}")


def swap_header(pages: int) -> bytes:
    """The first page of a swap area of ``pages`` pages: ``union swap_header`` (include/linux/swap.h) with
    version 1, last_page = pages - 1, no bad pages, and the SWAPSPACE2 signature in its last 10 bytes."""
    page = bytearray(PAGE)
    page[1024:1036] = (1).to_bytes(4, sys.byteorder) + (pages - 1).to_bytes(4, sys.byteorder) + bytes(4)
    page[PAGE - 10 :] = b"SWAPSPACE2"
    return bytes(page)


def remove_swapfile(path: Path) -> None:
    """Swap the file off if it is on (its pages are read back into memory first), then delete it. Only ever
    called on a file of a run (``cleanup`` checks the name)."""
    path = Path(path)
    if any(a.path == path for a in active_swaps()) and _libc.swapoff(os.fsencode(path)) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL:  # EINVAL: not a swap area (any more)
            raise OSError(err, f"swapoff {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)
