"""The guest machine: a KVM VM whose vCPUs replay access lists natively, each on its own host thread.

This runs inside the guest process (``mmnsim.real.child``); ``mmnsim.real.guest.Guest`` drives it from the
parent. Three memslots, so that only guest RAM is the memory under test:

    slot 0  control  guest-physical 0            the program, a GDT and TSS page, the page tables
    slot 1  buffer   right after control          the access lists, one region per vCPU (shared with the
                                                  parent: a memfd the parent created and fills)
    slot 2  RAM      from RAM_BASE (1 GiB-aligned) ``memory_mib`` of anonymous private memory

all below 64 GiB of guest-physical space (without KVM_SET_CPUID2 the guest's physical address width is 36
bits, and KVM_SET_SREGS refuses a CR3 above it). The page tables (``mmnsim.real.pagetables``) identity-map
the three slots with 2 MiB leaves when ``guest_thp``, else 4 KiB leaves.

Each vCPU runs in 64-bit mode at CPL3 (long mode: CR0 = PE|ET|NE|PG, CR4 = PAE, EFER = LME|LMA; a 64-bit
code segment of DPL 3, selector 0x33; data segments of DPL 3, selector 0x2b; a busy 64-bit TSS in TR).
On this machine's KVM (PVM, shadow paging without hardware virtualization) a CPL0 guest is emulated
instruction by instruction and never exercises the shadow MMU, while a CPL3 guest runs natively; the same
setup is valid on VMX and SVM hosts (IOPL 3 makes ``out`` legal at CPL3 there).
"""

import ctypes
import queue
import threading
import time
from contextlib import ExitStack

import numpy as np

from . import pagetables, program
from .hostmem import HUGE_PAGE_SIZE, PAGE_SIZE, Mapping
from .kvm import KVM_EXIT_INTR, KVM_EXIT_IO, Kvm, Stat, kvm_regs, kvm_segment, kvm_sregs
from .pin import pin

CONTROL_SLOT, BUFFER_SLOT, RAM_SLOT = 0, 1, 2
CODE_ADDRESS = 0x0000  # control page 0: the program
GDT_ADDRESS = 0x1000  # control page 1: the GDT (all zero: KVM_SET_SREGS loads the segments' hidden parts)
TSS_ADDRESS = 0x2000  # control page 2: the TSS that TR names (never used: the guest changes no privilege)
TABLES_ADDRESS = 0x3000  # control page 3 on: the page tables
GUEST_PHYS_LIMIT = 1 << 36  # 64 GiB: the guest's physical address width without KVM_SET_CPUID2
RAM_ALIGN = 1 << 30
ENTRY_BYTES = 4  # one uint32 per access (mmnsim.real.program)

# Control registers and EFER (Intel SDM vol. 3, 2.5 and 2.2.1)
CR0_PE, CR0_ET, CR0_NE, CR0_PG = 1 << 0, 1 << 4, 1 << 5, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
# Segments: GDT index << 3 | RPL 3
USER_CODE_SELECTOR, USER_DATA_SELECTOR, TSS_SELECTOR = 0x33, 0x2B, 0x40
SEG_TYPE_CODE_XR_ACCESSED, SEG_TYPE_DATA_RW_ACCESSED, SEG_TYPE_TSS64_BUSY = 11, 3, 11


PR_SET_NAME = 15  # include/uapi/linux/prctl.h


def name_this_thread(name: str) -> None:
    """Name the calling thread (its comm, at most 15 bytes): trace lines and /proc show it."""
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class GuestError(RuntimeError):
    """The guest, or the guest process, did not do what was asked: one line saying what happened."""


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


class Layout:
    """Where each memslot lies in guest-physical space, and how many page-table pages map them."""

    def __init__(self, ram_bytes: int, buffer_bytes: int, guest_thp: bool):
        control = HUGE_PAGE_SIZE
        while True:  # the tables map the control slot that holds them: grow it until they fit
            self.buffer_start = control
            self.ram_start = _align_up(self.buffer_start + buffer_bytes, RAM_ALIGN)
            self.regions = [
                (0, control),
                (self.buffer_start, self.buffer_start + _align_up(buffer_bytes, HUGE_PAGE_SIZE)),
                (self.ram_start, self.ram_start + ram_bytes),
            ]
            self.table_pages = pagetables.table_pages(self.regions, guest_thp)
            needed = _align_up(TABLES_ADDRESS + self.table_pages * PAGE_SIZE, HUGE_PAGE_SIZE)
            if needed <= control:
                break
            control = needed
        self.control_bytes = control
        self.ram_end = self.ram_start + ram_bytes
        if self.ram_end > GUEST_PHYS_LIMIT:
            limit = (GUEST_PHYS_LIMIT - self.ram_start) >> 20
            raise ValueError(f"guest RAM of {ram_bytes >> 20} MiB does not fit below 64 GiB of guest-physical "
                             f"space (36-bit address width); at most {limit} MiB")  # fmt: skip


def _long_mode_sregs(sregs: kvm_sregs, cr3: int) -> None:
    """Set ``sregs`` for 64-bit mode at CPL3 with paging from ``cr3``."""

    def segment(selector: int, seg_type: int, code: bool) -> kvm_segment:
        return kvm_segment(base=0, limit=0xFFFFFFFF, selector=selector, type=seg_type, present=1, dpl=3,
                           db=0 if code else 1, s=1, l=1 if code else 0, g=1)  # fmt: skip

    sregs.cs = segment(USER_CODE_SELECTOR, SEG_TYPE_CODE_XR_ACCESSED, code=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, segment(USER_DATA_SELECTOR, SEG_TYPE_DATA_RW_ACCESSED, code=False))
    sregs.tr = kvm_segment(base=TSS_ADDRESS, limit=0x67, selector=TSS_SELECTOR, type=SEG_TYPE_TSS64_BUSY, present=1)
    sregs.ldt = kvm_segment(unusable=1, type=2)
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDRESS, 0xFFF
    sregs.idt.base, sregs.idt.limit = 0, 0  # no interrupts, no exceptions: a fault ends in KVM_EXIT_SHUTDOWN
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG
    sregs.cr3 = cr3
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA


class _VcpuThread:
    """A vCPU and the host thread that runs it, waiting for chunks to replay."""

    def __init__(self, vcpu, ram_address: int, done: queue.SimpleQueue):
        self.vcpu = vcpu
        self._ram_address = ram_address
        self._done = done
        self._jobs = queue.SimpleQueue()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"vcpu{vcpu.id}", daemon=True)
        self.thread.start()
        self._started.wait()

    @property
    def tid(self) -> int:
        """The host thread id of this vCPU (the pid its trace events carry)."""
        return self.thread.native_id

    def submit(self, first: int, count: int, entry: int = program.ENTRY) -> None:
        """Replay ``count`` entries from guest address ``first`` (or, with ``entry=program.TOUCH``, touch
        ``count`` pages from there); the result goes to the ``done`` queue."""
        self._jobs.put((first, count, entry))

    def stop(self) -> None:
        self._jobs.put(None)
        self.thread.join()

    def _serve(self) -> None:
        name_this_thread(f"mmnsim-vcpu{self.vcpu.id}")
        self._started.set()
        while (job := self._jobs.get()) is not None:
            try:
                self._replay(*job)
                self._done.put((self.vcpu.id, None))
            except BaseException as e:  # reported to the caller, which raises it
                self._done.put((self.vcpu.id, e))

    def _replay(self, first: int, count: int, entry: int) -> None:
        regs = kvm_regs(rip=CODE_ADDRESS + entry, rsi=first, rcx=count, rbx=self._ram_address,
                        rdx=program.EXIT_PORT, rflags=program.RFLAGS)  # fmt: skip
        self.vcpu.set_regs(regs)
        while True:
            try:
                reason = self.vcpu.run()
            except InterruptedError:
                continue  # a signal interrupted KVM_RUN: the guest resumes where it was
            io = self.vcpu.run_struct.exit.io
            if reason == KVM_EXIT_IO and io.port == program.EXIT_PORT:
                break
            if reason != KVM_EXIT_INTR:
                rip = self.vcpu.get_regs().rip
                raise GuestError(f"vcpu {self.vcpu.id} stopped with {self.vcpu.describe_exit()} at rip {rip:#x}")
        regs = self.vcpu.get_regs()
        stride = PAGE_SIZE if entry == program.TOUCH else ENTRY_BYTES
        if regs.rcx != 0 or regs.rsi != first + count * stride:
            raise GuestError(f"vcpu {self.vcpu.id} exited with {regs.rcx} of {count} accesses left")


class RamOps:
    """What the parent may do to a tenant's RAM (``self.ram``, a Mapping) between replays: madvise, mprotect,
    pin. Shared by the KVM guest (``Machine``) and a plain process's memory (``mmnsim.real.plain``)."""

    ram: Mapping
    _pin = None

    def madvise(self, advice: str, first_page: int, pages: int | None) -> None:
        """``madvise`` of guest pages ``[first_page, first_page + pages)`` (all from ``first_page`` when None)."""
        length = None if pages is None else pages * PAGE_SIZE
        self.ram.madvise(advice, first_page * PAGE_SIZE, length)

    def mprotect(self, protection: str, first_page: int, pages: int | None) -> None:
        """``mprotect`` of guest pages ``[first_page, first_page + pages)`` (all from ``first_page`` when None)."""
        length = None if pages is None else pages * PAGE_SIZE
        self.ram.mprotect(protection, first_page * PAGE_SIZE, length)

    def pin(self, method: str) -> tuple[str, str]:
        """Pin all of guest RAM (``mmnsim.real.pin``); returns the method used and a note (why it fell back)."""
        if self._pin is not None:
            raise GuestError(f"guest RAM is already pinned ({self._pin.method})")
        self._pin, note = pin(self.ram, method)
        return self._pin.method, note

    def unpin(self) -> None:
        pinned, self._pin = self._pin, None
        if pinned is not None:
            pinned.close()


class Machine(RamOps):
    """The VM, its three memslots, the program and page tables, and ``vcpus`` vCPU threads.

    ``buffer_fd`` is the shared buffer of access lists, ``vcpus * chunk_accesses`` entries of 4 bytes:
    vCPU ``v`` reads its chunk from entry ``v * chunk_accesses``. Close it with ``close()`` (or ``with``):
    the vCPU threads stop, the descriptors close (destroying the VM) and the memory is unmapped.
    """

    def __init__(self, memory_mib: int, vcpus: int, guest_thp: bool, buffer_fd: int, chunk_accesses: int):
        if memory_mib < 2 or memory_mib % 2:
            raise ValueError(f"guest memory must be a positive whole number of 2 MiB pages, got {memory_mib} MiB")
        if vcpus < 1:
            raise ValueError(f"a guest needs at least one vCPU, got {vcpus}")
        self.vcpus = vcpus
        self.chunk_accesses = chunk_accesses
        self.guest_thp = guest_thp
        ram_bytes = memory_mib << 20
        buffer_bytes = vcpus * chunk_accesses * ENTRY_BYTES
        self.layout = layout = Layout(ram_bytes, buffer_bytes, guest_thp)
        self._pin = None
        self._threads: list[_VcpuThread] = []
        self._stack = ExitStack()
        try:
            # Closed in reverse: the vCPUs and the VM go before the memory is unmapped, so that tearing
            # down raises no notifier traffic for a VM still alive.
            self.control = self._stack.enter_context(Mapping(layout.control_bytes, align=HUGE_PAGE_SIZE))
            self.buffer = self._stack.enter_context(Mapping(_align_up(buffer_bytes, PAGE_SIZE), fd=buffer_fd))
            self.ram = self._stack.enter_context(Mapping(ram_bytes, align=HUGE_PAGE_SIZE))
            kvm = self._stack.enter_context(Kvm())
            self.vm = self._stack.enter_context(kvm.create_vm())
            cr3 = self._write_control()
            self.vm.set_user_memory_region(CONTROL_SLOT, 0, layout.control_bytes, self.control.address)
            self.vm.set_user_memory_region(BUFFER_SLOT, layout.buffer_start, self.buffer.size, self.buffer.address)
            self.vm.set_user_memory_region(RAM_SLOT, layout.ram_start, ram_bytes, self.ram.address)
            self._done = queue.SimpleQueue()
            for v in range(vcpus):
                vcpu = self._stack.enter_context(self.vm.create_vcpu(v))
                sregs = vcpu.get_sregs()
                _long_mode_sregs(sregs, cr3)
                vcpu.set_sregs(sregs)
                self._threads.append(_VcpuThread(vcpu, layout.ram_start, self._done))
            self._touch_buffer()
        except BaseException:
            self.close()
            raise

    def _write_control(self) -> int:
        """Write the program and the page tables into the control slot; return CR3."""
        view = self.control.bytes_view()
        memory = np.frombuffer(view, dtype=np.uint8)
        memory[CODE_ADDRESS : CODE_ADDRESS + len(program.CODE)] = np.frombuffer(program.CODE, dtype=np.uint8)
        tables_bytes = self.layout.table_pages * PAGE_SIZE
        tables = memory[TABLES_ADDRESS : TABLES_ADDRESS + tables_bytes].view(np.uint64).reshape(-1, 512)
        cr3 = pagetables.build(tables, TABLES_ADDRESS, self.layout.regions, self.guest_thp)
        del memory, tables, view  # the views must not outlive the mapping
        return cr3

    def _touch_buffer(self) -> None:
        """Each vCPU reads every page of its list region once (program.TOUCH): KVM maps them now."""
        region_bytes = self.chunk_accesses * ENTRY_BYTES
        for v, thread in enumerate(self._threads):
            thread.submit(self.layout.buffer_start + v * region_bytes, -(-region_bytes // PAGE_SIZE), program.TOUCH)
        self._collect(len(self._threads))

    def _collect(self, jobs: int) -> None:
        """Wait for ``jobs`` vCPU results; raise the first error."""
        errors = [error for _ in range(jobs) if (error := self._done.get()[1]) is not None]
        if errors:
            raise errors[0]

    @property
    def vcpu_tids(self) -> list[int]:
        """The host thread id of each vCPU."""
        return [t.tid for t in self._threads]

    @property
    def ram_range(self) -> tuple[int, int]:
        """The host virtual address range ``[start, end)`` of guest RAM."""
        return self.ram.address, self.ram.end

    def run(self, counts: list[int]) -> float:
        """vCPU ``v`` replays the first ``counts[v]`` entries of its buffer region; all at once, each on its
        thread. Returns the wall time from the first vCPU's start to the last one's exit, in seconds."""
        if len(counts) != self.vcpus or any(not 0 <= c <= self.chunk_accesses for c in counts):
            raise ValueError(f"counts must be {self.vcpus} numbers in [0, {self.chunk_accesses}], got {counts}")
        region_bytes = self.chunk_accesses * ENTRY_BYTES
        regions = [self.layout.buffer_start + v * region_bytes for v in range(self.vcpus)]
        busy = [(t, first, c) for t, first, c in zip(self._threads, regions, counts, strict=True) if c]
        start = time.perf_counter()
        for thread, first, count in busy:
            thread.submit(first, count)
        self._collect(len(busy))
        return time.perf_counter() - start

    def stats(self) -> tuple[dict[str, Stat], list[dict[str, Stat]]]:
        """KVM's statistics now: the VM's, and each vCPU's."""
        return self.vm.stats(), [t.vcpu.stats() for t in self._threads]

    def close(self) -> None:
        """Stop the vCPU threads, unpin, close every descriptor (the VM goes) and unmap the memory."""
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.stop()
        try:
            self.unpin()
        finally:
            self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
