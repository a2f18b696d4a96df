"""Processes for tests/test_real_host.py: tenants that touch memory, with or without a tiny KVM VM.

    python real_standin.py touch MIB            a tenant: touches MIB MiB of anonymous memory
    python real_standin.py vm MIB DONTNEED_MIB  a tenant with a VM: a memslot of MIB MiB, touched from the
                                                host side, then MADV_DONTNEED of its first DONTNEED_MIB MiB

A tenant prints one JSON line when it is ready (a VM's memslot addresses), waits for a line on stdin,
does its work, prints "done", and exits when stdin closes. The tenants use the standard library only (they
start in milliseconds). (A stand-in for the whole run was retired: the real run is tested itself,
tests/test_real_run.py.)
"""

import ctypes
import fcntl
import json
import mmap
import os
import struct
import sys

MIB = 1 << 20
PAGE = mmap.PAGESIZE
KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01), include/uapi/linux/kvm.h
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)


def touch(mem: mmap.mmap, size: int) -> None:
    for offset in range(0, size, PAGE):
        mem[offset] = 1


def tenant_touch(mib: int) -> None:
    print(json.dumps({"pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    mem = mmap.mmap(-1, mib * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    touch(mem, mib * MIB)
    print("done", flush=True)
    sys.stdin.read()


def tenant_vm(mib: int, dontneed_mib: int) -> None:
    """A VM with one memslot over anonymous memory (no vCPU: the notifier is registered when the VM is
    created, kvm_create_vm -> kvm_init_mmu_notifier), so host-side invalidations reach KVM."""
    size = mib * MIB
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("IIQQQ", 0, 0, 0, size, start))
    print(json.dumps({"pid": os.getpid(), "start": start, "end": start + size}), flush=True)
    sys.stdin.readline()
    touch(mem, size)
    if dontneed_mib:
        mem.madvise(mmap.MADV_DONTNEED, 0, dontneed_mib * MIB)
    print("done", flush=True)
    sys.stdin.read()
    os._exit(0)  # the VM's notifier goes with the mm (mmu_notifier_release): no further invalidations


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "touch":
        tenant_touch(int(sys.argv[2]))
    else:
        tenant_vm(int(sys.argv[2]), int(sys.argv[3]))
