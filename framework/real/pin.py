"""The long-term pin stand-in (``secondary.mode=pin``): make the guest's RAM unevictable the way a pin does.

KVM before mmu notifiers (2.6.25) held a reference on every guest page it mapped (get_user_pages), so the
host could neither reclaim nor migrate those pages; today's KVM pins nothing. What pins user memory today,
with the same kernel semantics, is ``pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)`` (mm/gup.c), called by
RDMA (drivers/infiniband/core/umem.c), VFIO (drivers/vfio/vfio_iommu_type1.c) and io_uring's registered
buffers. Of those, io_uring is the one any process can use without a device:

- ``IORING_REGISTER_BUFFERS`` (io_uring/rsrc.c, io_sqe_buffers_register -> io_sqe_buffer_register ->
  io_pin_pages in io_uring/memmap.c) calls ``pin_user_pages_fast(addr, n, FOLL_WRITE | FOLL_LONGTERM)``:
  every page is faulted in writable, first migrated out of ZONE_MOVABLE and CMA
  (check_and_migrate_movable_folios, as for any long-term pin), and pinned (folio refcount raised by
  GUP_PIN_COUNTING_BIAS, counted in /proc/vmstat ``nr_foll_pin_acquired``) until unregistered.
- A pinned anonymous page stays on the LRU, but reclaim cannot take it: try_to_unmap_one (mm/rmap.c)
  refuses to unmap an exclusive anonymous page that may be pinned (folio_try_share_anon_rmap_pte fails on
  folio_maybe_dma_pinned), so shrink_folio_list keeps it; migration and compaction refuse it (the extra
  references fail folio_migrate_mapping's refcount check; isolate_migratepages_block skips pinned anonymous
  folios), and khugepaged and MADV_COLLAPSE cannot collapse it. That is exactly the page the model's pin
  mode describes: never freed, swapped, migrated or compacted.
- Limits: one registered buffer is at most 1 GiB (io_buffer_validate), at most IORING_MAX_REG_BUFFERS
  (16384) buffers per ring, so the RAM is registered in 1 GiB pieces. The pinned bytes count against
  RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK (io_account_mem; root has it). The sysctl
  kernel.io_uring_disabled (2: off; 1: only for the group io_uring_group and CAP_SYS_ADMIN) may forbid
  io_uring_setup, which then fails with EPERM.

``mlock`` is the fallback, and not a pin: mlocked pages sit on the unevictable LRU, so reclaim never
touches them, but compaction and migration still move them (vm.compact_unevictable_allowed is 1 by
default) and khugepaged still collapses them. ``pin(..., method="auto")`` uses io_uring and falls back to
mlock, saying why; ``method="io_uring"`` raises instead.

Note that a pin makes the whole range resident at once (GUP faults every page in), as VFIO does when it
maps a guest; KVM of 2008 pinned each page when it first mapped it. After the boot pass (which touches every
page) the two agree. A pin larger than the memory cgroup's limit cannot succeed: the cgroup's OOM killer
ends the process, which is the kernel's answer to a pinned guest that does not fit.
"""

import ctypes
import os
from ctypes import c_long, c_uint32, c_uint64, c_void_p

from .hostmem import Mapping

# arch/x86/entry/syscalls/syscall_64.tbl
SYS_IO_URING_SETUP = 425
SYS_IO_URING_REGISTER = 427
# include/uapi/linux/io_uring.h
IORING_REGISTER_BUFFERS = 0
IORING_UNREGISTER_BUFFERS = 1
MAX_BUFFER_BYTES = 1 << 30  # io_buffer_validate: iov_len > SZ_1G is -EFAULT

METHODS = ("auto", "io_uring", "mlock")


class io_uring_params(ctypes.Structure):  # noqa: N801 (the kernel's name; only its size and zeros matter here)
    _fields_ = (
        ("sq_entries", c_uint32),
        ("cq_entries", c_uint32),
        ("flags", c_uint32),
        ("sq_thread_cpu", c_uint32),
        ("sq_thread_idle", c_uint32),
        ("features", c_uint32),
        ("wq_fd", c_uint32),
        ("resv", c_uint32 * 3),
        ("sq_off", c_uint32 * 10),  # struct io_sqring_offsets (40 bytes)
        ("cq_off", c_uint32 * 10),  # struct io_cqring_offsets (40 bytes)
    )


class iovec(ctypes.Structure):  # noqa: N801
    _fields_ = (("iov_base", c_void_p), ("iov_len", c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = c_long


def _syscall(name: str, number: int, *args) -> int:
    ret = _libc.syscall(c_long(number), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name} failed: {os.strerror(err)}")
    return ret


class IoUringPin:
    """A long-term pin of ``[address, address + length)``: the memory registered as io_uring fixed buffers."""

    method = "io_uring"

    def __init__(self, address: int, length: int):
        params = io_uring_params()
        self.fd = _syscall("io_uring_setup", SYS_IO_URING_SETUP, c_uint32(1), ctypes.byref(params))
        end = address + length
        pieces = [(a, min(MAX_BUFFER_BYTES, end - a)) for a in range(address, end, MAX_BUFFER_BYTES)]
        vectors = (iovec * len(pieces))(*pieces)
        try:
            _syscall("io_uring_register(IORING_REGISTER_BUFFERS)", SYS_IO_URING_REGISTER, ctypes.c_int(self.fd),
                     c_uint32(IORING_REGISTER_BUFFERS), vectors, c_uint32(len(pieces)))  # fmt: skip
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise

    def close(self) -> None:
        """Unpin now (unregistering is synchronous; closing the ring alone would unpin later, from a worker)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                _syscall("io_uring_register(IORING_UNREGISTER_BUFFERS)", SYS_IO_URING_REGISTER, ctypes.c_int(fd),
                         c_uint32(IORING_UNREGISTER_BUFFERS), None, c_uint32(0))  # fmt: skip
            finally:
                os.close(fd)


class MlockPin:
    """The fallback: ``mlock`` of the mapping (unevictable, but still migratable: not a pin)."""

    method = "mlock"

    def __init__(self, mapping: Mapping):
        self._mapping = mapping
        mapping.mlock()

    def close(self) -> None:
        mapping, self._mapping = self._mapping, None
        if mapping is not None and mapping.address:
            mapping.munlock()


def pin(mapping: Mapping, method: str = "auto") -> tuple[IoUringPin | MlockPin, str]:
    """Pin all of ``mapping`` with ``method`` (``auto``, ``io_uring`` or ``mlock``); returns the pin (``close()``
    releases it) and a note: empty, or why ``auto`` fell back to mlock."""
    if method not in METHODS:
        raise ValueError(f"unknown pin method {method!r}; accepted: {', '.join(METHODS)}")
    if method == "mlock":
        return MlockPin(mapping), ""
    try:
        return IoUringPin(mapping.address, mapping.size), ""
    except OSError as e:
        if method == "io_uring":
            raise OSError(e.errno, f"cannot pin guest memory with io_uring: {e.strerror}") from None
        note = f"io_uring could not pin ({e.strerror}); fell back to mlock, which does not stop migration"
        return MlockPin(mapping), note
