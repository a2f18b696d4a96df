"""Host memory for the guest: mappings at chosen alignments, and the madvise/mlock calls on them.

Python's ``mmap`` module cannot place a mapping at a 2 MiB boundary, and a transparent huge page (and a
2 MiB spte over it) needs one, so the guest's memory is mapped here through libc's ``mmap(2)`` by ctypes:
map ``size + align`` bytes, then unmap the unaligned head and tail. ``Mapping`` also carries the calls the
real twin makes on guest memory: ``madvise(2)`` by advice name (mm/madvise.c), ``mlock(2)``/``munlock(2)``
(mm/mlock.c). Each failure raises ``OSError`` with one line naming the call and the range.
"""

import ctypes
import mmap
import os
from ctypes import c_int, c_long, c_size_t, c_void_p

PAGE_SIZE = 4096
HUGE_PAGE_SIZE = 2 << 20  # a PMD-mapped transparent huge page, a 2 MiB spte, a guest 2 MiB page

# include/uapi/asm-generic/mman-common.h
ADVICE = {
    "normal": 0,  # MADV_NORMAL
    "random": 1,  # MADV_RANDOM
    "sequential": 2,  # MADV_SEQUENTIAL
    "willneed": 3,  # MADV_WILLNEED
    "dontneed": 4,  # MADV_DONTNEED: drop the pages now (anonymous memory reads back as zeros)
    "free": 8,  # MADV_FREE
    "hugepage": 14,  # MADV_HUGEPAGE: THP for this range when the THP mode is "madvise"
    "nohugepage": 15,  # MADV_NOHUGEPAGE
    "cold": 20,  # MADV_COLD: deactivate
    "pageout": 21,  # MADV_PAGEOUT: reclaim now (needs swap for anonymous memory)
    "populate_read": 22,  # MADV_POPULATE_READ
    "populate_write": 23,  # MADV_POPULATE_WRITE: fault in, writable
    "collapse": 25,  # MADV_COLLAPSE: collapse into THPs now
}
# mprotect(2) protections by name (include/uapi/asm-generic/mman-common.h)
PROTECTION = {"none": 0, "read": mmap.PROT_READ, "rw": mmap.PROT_READ | mmap.PROT_WRITE}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = c_void_p
_libc.mmap.argtypes = (c_void_p, c_size_t, c_int, c_int, c_int, c_long)
_libc.munmap.argtypes = (c_void_p, c_size_t)
_libc.madvise.argtypes = (c_void_p, c_size_t, c_int)
_libc.mprotect.argtypes = (c_void_p, c_size_t, c_int)
_libc.mlock.argtypes = (c_void_p, c_size_t)
_libc.munlock.argtypes = (c_void_p, c_size_t)
_libc.mlockall.argtypes = (c_int,)
_MAP_FAILED = ctypes.c_void_p(-1).value


# include/uapi/asm-generic/mman-common.h
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


def lock_this_process() -> None:
    """Keep this process's own memory out of reclaim: ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``, each
    page locked as it is faulted in, mappings made later included (mm->def_flags). A tenant's child calls it once
    it is in the run's memory cgroup: what its interpreter and threads allocate from then on is charged to the
    group, and unlocked it would be reclaimed and refaulted beside the tenant's memory, which the model's host
    does not hold. Every ``Mapping`` unlocks itself (``munlock``), so the tenant's memory is reclaimed as
    before."""
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) failed: {os.strerror(err)} (the twin "
                      "keeps its tenant processes' own memory out of reclaim: it needs CAP_IPC_LOCK, which root "
                      "has, or an RLIMIT_MEMLOCK of unlimited)")  # fmt: skip


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")


class Mapping:
    """``size`` bytes of memory at an address that is a multiple of ``align``.

    Anonymous and private by default (``MAP_PRIVATE | MAP_ANONYMOUS``: the guest's RAM); with ``fd``, a shared
    mapping of that file (``MAP_SHARED``: a buffer shared with another process). Unmapped exactly once, by
    ``close()`` or on leaving a ``with`` block.
    """

    def __init__(self, size: int, *, align: int = PAGE_SIZE, fd: int = -1):
        if size <= 0 or size % PAGE_SIZE or align % PAGE_SIZE:
            raise ValueError(f"a mapping needs a positive size and alignment in whole pages, got {size}, {align}")
        self.size = size
        self.address = 0
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED if fd >= 0 else mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        span = size if fd >= 0 else size + align - PAGE_SIZE  # room to slide to an aligned start
        base = _libc.mmap(None, span, prot, flags, fd, 0)
        if base is None or base == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {span >> 20} MiB failed: {os.strerror(err)}")
        start = -(-base // align) * align
        if fd >= 0 and start != base:
            _libc.munmap(base, span)
            raise OSError(0, f"a shared mapping came back at {base:#x}, not aligned to {align:#x}")
        head, tail = start - base, base + span - (start + size)
        if head:
            _libc.munmap(base, head)
        if tail:
            _libc.munmap(start + size, tail)
        self.address = start
        # Not locked, even in a process that locks its own memory (lock_this_process): no-op otherwise.
        _check(_libc.munlock(start, size), f"munlock of {size} bytes")

    @property
    def end(self) -> int:
        return self.address + self.size

    def _range(self, offset: int, length: int | None) -> tuple[int, int]:
        length = self.size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > self.size or offset % PAGE_SIZE:
            raise ValueError(f"range [{offset:#x}, +{length:#x}) is not whole pages inside {self.size:#x} bytes")
        return self.address + offset, length

    def madvise(self, advice: str, offset: int = 0, length: int | None = None) -> None:
        """``madvise(2)`` with ``advice`` (a key of ``ADVICE``) over ``[offset, offset + length)`` bytes."""
        if advice not in ADVICE:
            raise ValueError(f"unknown madvise advice {advice!r}; accepted: {', '.join(ADVICE)}")
        address, length = self._range(offset, length)
        _check(_libc.madvise(address, length, ADVICE[advice]), f"madvise(MADV_{advice.upper()}) of {length} bytes")

    def mprotect(self, protection: str, offset: int = 0, length: int | None = None) -> None:
        """``mprotect(2)`` to ``protection`` (a key of ``PROTECTION``) over ``[offset, offset + length)`` bytes.
        Present pages stay (change_protection rewrites their PTEs), and every notifier subscriber is told with
        MMU_NOTIFY_PROTECTION_VMA (mm/mprotect.c change_pmd_range)."""
        if protection not in PROTECTION:
            raise ValueError(f"unknown protection {protection!r}; accepted: {', '.join(PROTECTION)}")
        address, length = self._range(offset, length)
        _check(_libc.mprotect(address, length, PROTECTION[protection]), f"mprotect({protection}) of {length} bytes")

    def mlock(self, offset: int = 0, length: int | None = None) -> None:
        """``mlock(2)``: fault the range in and keep it on the unevictable LRU (not a pin: it still migrates)."""
        address, length = self._range(offset, length)
        _check(_libc.mlock(address, length), f"mlock of {length} bytes")

    def munlock(self, offset: int = 0, length: int | None = None) -> None:
        address, length = self._range(offset, length)
        _check(_libc.munlock(address, length), f"munlock of {length} bytes")

    def bytes_view(self) -> ctypes.Array:
        """The mapping as a ctypes char array (for numpy.frombuffer); drop it before ``close()``."""
        return (ctypes.c_char * self.size).from_address(self.address)

    def close(self) -> None:
        address, self.address = self.address, 0
        if address:
            _libc.munmap(address, self.size)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class _Iovec(ctypes.Structure):
    _fields_ = [("base", c_void_p), ("len", c_size_t)]


_SYS_PIDFD_OPEN, _SYS_PROCESS_MADVISE = 434, 440  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)


class OtherProcess:
    """Another process's memory, advised from this one: ``process_madvise(2)`` through a pidfd (5.10; mm/madvise.c
    accepts MADV_COLD, MADV_PAGEOUT, MADV_WILLNEED and MADV_COLLAPSE there). Closed by ``close()`` or on leaving
    a ``with`` block."""

    def __init__(self, pid: int):
        fd = _libc.syscall(_SYS_PIDFD_OPEN, c_int(pid), c_int(0))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_open({pid}) failed: {os.strerror(err)}")
        self.pid, self.fd = pid, fd

    def madvise(self, address: int, length: int, advice: str) -> None:
        iov = _Iovec(address, length)
        done = _libc.syscall(_SYS_PROCESS_MADVISE, c_int(self.fd), ctypes.byref(iov), c_size_t(1),
                             c_int(ADVICE[advice]), c_int(0))  # fmt: skip
        if done < 0:
            err = ctypes.get_errno()
            what = f"process_madvise({self.pid}, {address:#x}, {length}, {advice})"
            raise OSError(err, f"{what} failed: {os.strerror(err)}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OtherProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
