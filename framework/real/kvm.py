"""The KVM interface: /dev/kvm, a VM, its memslots and vCPUs, and KVM's binary statistics, from Python.

Everything here is the user-space API of ``include/uapi/linux/kvm.h`` (structures of x86 from
``arch/x86/include/uapi/asm/kvm.h``), called through ``fcntl.ioctl`` on the descriptors, with the structures
declared in ctypes under their kernel names. Three objects, one per kind of descriptor, as in the kernel:

- ``Kvm``: the system descriptor (``open("/dev/kvm")``): KVM_GET_API_VERSION, KVM_CHECK_EXTENSION,
  KVM_GET_VCPU_MMAP_SIZE and KVM_CREATE_VM.
- ``Vm``: a VM descriptor: KVM_SET_USER_MEMORY_REGION (one memslot per call, backed by memory the caller
  mapped), KVM_CREATE_VCPU and KVM_GET_STATS_FD.
- ``Vcpu``: a vCPU descriptor and its ``struct kvm_run`` (mmap of the descriptor): KVM_GET_REGS/KVM_SET_REGS,
  KVM_GET_SREGS/KVM_SET_SREGS, KVM_RUN and KVM_GET_STATS_FD.

Each is a context manager and closes its descriptor (and mapping) exactly once; a VM lives until its last
descriptor is closed (the VM's, every vCPU's, and any statistics descriptor: ``read_stats`` closes the one
it opens, since an open one keeps the VM, and its notifier subscription, alive).

A failed ioctl raises ``KvmError``, an ``OSError`` with the errno and one line naming the ioctl.
``fcntl.ioctl`` releases the GIL, so vCPUs run concurrently on several threads (KVM_RUN blocks in the
kernel while the guest runs).
"""

import ctypes
import fcntl
import mmap
import os
import struct
from ctypes import c_int16, c_uint8, c_uint16, c_uint32, c_uint64
from dataclasses import dataclass

API_VERSION = 12  # KVM_API_VERSION

# include/uapi/asm-generic/ioctl.h: a request number is dir << 30 | size << 16 | type << 8 | nr.
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:  # _IO(KVMIO, nr)
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct_type) -> int:  # _IOR(KVMIO, nr, type): the kernel writes the structure
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct_type))


def _iow(nr: int, struct_type) -> int:  # _IOW(KVMIO, nr, type): the kernel reads the structure
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct_type))


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801 (the kernel's name)
    """One memslot: guest-physical ``[guest_phys_addr, + memory_size)`` backed by ``userspace_addr``."""

    _fields_ = (
        ("slot", c_uint32),
        ("flags", c_uint32),  # KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY; 0 here
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),  # bytes; 0 deletes the slot
        ("userspace_addr", c_uint64),  # the host virtual address of the backing memory
    )


class kvm_regs(ctypes.Structure):  # noqa: N801
    """The general registers (arch/x86/include/uapi/asm/kvm.h)."""

    _fields_ = tuple(
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    )  # fmt: skip


class kvm_segment(ctypes.Structure):  # noqa: N801
    """A segment register with its hidden part, as the CPU holds it after loading a descriptor."""

    _fields_ = (
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    )


class kvm_dtable(ctypes.Structure):  # noqa: N801
    """A descriptor-table register (GDTR, IDTR)."""

    _fields_ = (("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3))


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):  # noqa: N801
    """The special registers: segments, descriptor tables, control registers, EFER."""

    _fields_ = (
        *((name, kvm_segment) for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *((name, c_uint64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    )


class _kvm_run_io(ctypes.Structure):  # noqa: N801  (kvm_run.io, KVM_EXIT_IO)
    _fields_ = (
        ("direction", c_uint8),  # KVM_EXIT_IO_IN 0, KVM_EXIT_IO_OUT 1
        ("size", c_uint8),  # bytes
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),  # relative to the start of kvm_run
    )


class _kvm_run_internal(ctypes.Structure):  # noqa: N801  (kvm_run.internal, KVM_EXIT_INTERNAL_ERROR)
    _fields_ = (("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16))


class _kvm_run_exit(ctypes.Union):  # noqa: N801  (the exit-reason union of kvm_run, the members used here)
    _fields_ = (
        ("hardware_exit_reason", c_uint64),  # hw, KVM_EXIT_UNKNOWN
        ("hardware_entry_failure_reason", c_uint64),  # fail_entry, KVM_EXIT_FAIL_ENTRY
        ("io", _kvm_run_io),
        ("internal", _kvm_run_internal),
        ("padding", ctypes.c_char * 256),
    )


class kvm_run(ctypes.Structure):  # noqa: N801
    """The head of ``struct kvm_run``: the vCPU's shared page, read after KVM_RUN returns."""

    _fields_ = (
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", _kvm_run_exit),
    )


class kvm_stats_header(ctypes.Structure):  # noqa: N801
    """The head of a binary statistics file (KVM_GET_STATS_FD): where the descriptors and values are."""

    _fields_ = (
        ("flags", c_uint32),
        ("name_size", c_uint32),  # bytes of each descriptor's name, NUL included
        ("num_desc", c_uint32),
        ("id_offset", c_uint32),
        ("desc_offset", c_uint32),
        ("data_offset", c_uint32),
    )


class kvm_stats_desc(ctypes.Structure):  # noqa: N801
    """One statistic's descriptor; its name (``name_size`` bytes) follows it in the file."""

    _fields_ = (
        ("flags", c_uint32),  # KVM_STATS_TYPE_* | KVM_STATS_UNIT_* | KVM_STATS_BASE_*
        ("exponent", c_int16),
        ("size", c_uint16),  # number of u64 values (1, or a histogram's buckets)
        ("offset", c_uint32),  # of its values, from data_offset
        ("bucket_size", c_uint32),
    )


# ioctls, by descriptor.
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_GET_STATS_FD = _io(0xCE)

# KVM_CHECK_EXTENSION capabilities used here.
KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_BINARY_STATS_FD = 203

# kvm_run.exit_reason
EXIT_REASONS = {
    0: "KVM_EXIT_UNKNOWN",
    1: "KVM_EXIT_EXCEPTION",
    2: "KVM_EXIT_IO",
    3: "KVM_EXIT_HYPERCALL",
    4: "KVM_EXIT_DEBUG",
    5: "KVM_EXIT_HLT",
    6: "KVM_EXIT_MMIO",
    7: "KVM_EXIT_IRQ_WINDOW_OPEN",
    8: "KVM_EXIT_SHUTDOWN",
    9: "KVM_EXIT_FAIL_ENTRY",
    10: "KVM_EXIT_INTR",
    17: "KVM_EXIT_INTERNAL_ERROR",
    24: "KVM_EXIT_SYSTEM_EVENT",
}
KVM_EXIT_IO = 2
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_OUT = 1

# kvm_stats_desc.flags: the type in bits 0-3.
KVM_STATS_TYPE_MASK = 0xF
STAT_TYPES = {0: "cumulative", 1: "instant", 2: "peak", 3: "linear_hist", 4: "log_hist"}


class KvmError(OSError):
    """A KVM ioctl failed: ``str()`` is one line naming the ioctl and the error."""


def _ioctl(fd: int, request: int, name: str, arg=0):
    try:
        return fcntl.ioctl(fd, request, arg)
    except InterruptedError:
        raise  # a signal: the caller decides whether to retry (KVM_RUN resumes the guest where it stopped)
    except OSError as e:
        raise KvmError(e.errno, f"{name} failed: {e.strerror}") from None


class _Descriptor:
    """A file descriptor closed exactly once, by ``close()`` or on leaving a ``with`` block."""

    fd: int = -1

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class Kvm(_Descriptor):
    """``/dev/kvm``: checks the API version (KVM_GET_API_VERSION must be 12) and creates VMs."""

    def __init__(self, path: str = "/dev/kvm"):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(e.errno, f"cannot open {path}: {e.strerror}") from None
        version = _ioctl(self.fd, KVM_GET_API_VERSION, "KVM_GET_API_VERSION")
        if version != API_VERSION:
            self.close()
            raise KvmError(0, f"KVM_GET_API_VERSION returned {version}; this module speaks version {API_VERSION}")
        needed = {KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY", KVM_CAP_BINARY_STATS_FD: "KVM_CAP_BINARY_STATS_FD"}
        for cap, name in needed.items():
            if not self.check_extension(cap):
                self.close()
                raise KvmError(0, f"KVM_CHECK_EXTENSION: this KVM lacks {name}")
        self.vcpu_mmap_size = _ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when the capability is missing, else a positive (capability-specific) value."""
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", cap)

    def create_vm(self) -> "Vm":
        """KVM_CREATE_VM (machine type 0): a VM with no memory and no vCPUs."""
        return Vm(_ioctl(self.fd, KVM_CREATE_VM, "KVM_CREATE_VM", 0), self.vcpu_mmap_size)


class Vm(_Descriptor):
    """A VM descriptor: its memslots, its vCPUs, its statistics."""

    def __init__(self, fd: int, vcpu_mmap_size: int):
        self.fd = fd
        self._vcpu_mmap_size = vcpu_mmap_size

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int) -> None:
        """KVM_SET_USER_MEMORY_REGION: guest-physical ``[guest_phys_addr, + memory_size)`` is the host memory at
        ``userspace_addr`` (page-aligned, mapped by the caller for as long as the VM lives). From now on KVM
        subscribes to the mm's notifier for it: host changes to those pages reach KVM as invalidations."""
        region = kvm_userspace_memory_region(slot, 0, guest_phys_addr, memory_size, userspace_addr)
        _ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, f"KVM_SET_USER_MEMORY_REGION (slot {slot})", bytes(region))

    def create_vcpu(self, vcpu_id: int) -> "Vcpu":
        """KVM_CREATE_VCPU, and the mmap of its ``struct kvm_run``."""
        fd = _ioctl(self.fd, KVM_CREATE_VCPU, f"KVM_CREATE_VCPU ({vcpu_id})", vcpu_id)
        return Vcpu(fd, vcpu_id, self._vcpu_mmap_size)

    def stats(self) -> dict[str, "Stat"]:
        """The VM's binary statistics (remote_tlb_flush, pages_4k, pages_2m, ...), read now."""
        return read_stats(self.fd, "VM")


class Vcpu(_Descriptor):
    """A vCPU: its registers, its ``kvm_run`` page, KVM_RUN. Run it from one thread (KVM_RUN blocks there)."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int):
        self.fd = fd
        self.id = vcpu_id
        try:
            self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.close()
            raise
        self.run_struct = kvm_run.from_buffer(self._map)

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            self.run_struct = None  # the ctypes view holds the buffer: drop it before closing the mapping
            self._map.close()
            self._map = None
        super().close()

    def get_regs(self) -> kvm_regs:
        regs = kvm_regs()
        _ioctl(self.fd, KVM_GET_REGS, f"KVM_GET_REGS (vcpu {self.id})", regs)
        return regs

    def set_regs(self, regs: kvm_regs) -> None:
        _ioctl(self.fd, KVM_SET_REGS, f"KVM_SET_REGS (vcpu {self.id})", bytes(regs))

    def get_sregs(self) -> kvm_sregs:
        sregs = kvm_sregs()
        _ioctl(self.fd, KVM_GET_SREGS, f"KVM_GET_SREGS (vcpu {self.id})", sregs)
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        _ioctl(self.fd, KVM_SET_SREGS, f"KVM_SET_SREGS (vcpu {self.id})", bytes(sregs))

    def run(self) -> int:
        """KVM_RUN: enter the guest until its next exit to user space; returns ``kvm_run.exit_reason``.
        A signal to this thread ends it with InterruptedError (EINTR); calling again resumes the guest."""
        _ioctl(self.fd, KVM_RUN, f"KVM_RUN (vcpu {self.id})")
        return self.run_struct.exit_reason

    def describe_exit(self) -> str:
        """The last exit, in one line (for error messages)."""
        run = self.run_struct
        reason = run.exit_reason
        text = EXIT_REASONS.get(reason, f"exit reason {reason}")
        if reason == KVM_EXIT_IO:
            io = run.exit.io
            text += f" (port {io.port:#x}, {'out' if io.direction == KVM_EXIT_IO_OUT else 'in'}, size {io.size})"
        elif reason == KVM_EXIT_FAIL_ENTRY:
            text += f" (hardware entry failure reason {run.exit.hardware_entry_failure_reason:#x})"
        elif reason == KVM_EXIT_INTERNAL_ERROR:
            internal = run.exit.internal
            data = ", ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
            text += f" (suberror {internal.suberror}, data [{data}])"
        return text

    def stats(self) -> dict[str, "Stat"]:
        """The vCPU's binary statistics (pf_fixed, pf_taken, exits, tlb_flush, ...), read now."""
        return read_stats(self.fd, f"vcpu {self.id}")


@dataclass(frozen=True)
class Stat:
    """One KVM statistic: its type (``cumulative``, ``instant``, ``peak``, ``linear_hist``, ``log_hist``)
    and its values (one for a counter, one per bucket for a histogram)."""

    kind: str
    values: tuple[int, ...]

    @property
    def value(self) -> int:
        """A scalar statistic's value."""
        return self.values[0]


def read_stats(owner_fd: int, owner: str) -> dict[str, Stat]:
    """All binary statistics of a VM or vCPU descriptor, by name (Documentation/virt/kvm/api.rst, 4.133).

    Opens the statistics descriptor (KVM_GET_STATS_FD), reads ``kvm_stats_header``, the ``kvm_stats_desc``
    array and the values, and closes it: an open statistics descriptor holds a reference to the VM.
    """
    fd = _ioctl(owner_fd, KVM_GET_STATS_FD, f"KVM_GET_STATS_FD ({owner})")
    try:
        header = kvm_stats_header.from_buffer_copy(os.pread(fd, ctypes.sizeof(kvm_stats_header), 0))
        desc_size = ctypes.sizeof(kvm_stats_desc) + header.name_size
        descs = os.pread(fd, desc_size * header.num_desc, header.desc_offset)
        entries = []
        for i in range(header.num_desc):
            raw = descs[i * desc_size : (i + 1) * desc_size]
            desc = kvm_stats_desc.from_buffer_copy(raw)
            name = raw[ctypes.sizeof(kvm_stats_desc) :].split(b"\0", 1)[0].decode()
            entries.append((name, desc))
        data_size = max((d.offset + 8 * d.size for _, d in entries), default=0)
        data = os.pread(fd, data_size, header.data_offset)
    finally:
        os.close(fd)
    stats = {}
    for name, desc in entries:
        values = struct.unpack_from(f"<{desc.size}Q", data, desc.offset)
        kind = STAT_TYPES.get(desc.flags & KVM_STATS_TYPE_MASK, f"type {desc.flags & KVM_STATS_TYPE_MASK}")
        stats[name] = Stat(kind, values)
    return stats
