"""Processes for tests/test_real_host.py: tenants that touch memory (with or without a tiny KVM VM), and a
stand-in for the real twin's run that creates every resource of a run through mmnsim.real and ends the way
it is told to.

    python real_standin.py touch MIB            a tenant: touches MIB MiB of anonymous memory
    python real_standin.py vm MIB DONTNEED_MIB  a tenant with a VM: a memslot of MIB MiB, touched from the
                                                host side, then MADV_DONTNEED of its first DONTNEED_MIB MiB
    python real_standin.py run MODE RUN_ID [--no-pdeathsig]
                                                the stand-in run; MODE: ok, fail, wait (until a signal),
                                                timeout (a 2 s time limit)

A tenant prints one JSON line when it is ready (a VM's memslot addresses), waits for a line on stdin,
does its work, prints "done", and exits when stdin closes. The tenants use the standard library only (they
start in milliseconds); the stand-in run prints one JSON line naming its resources once they all exist.
"""

import ctypes
import fcntl
import json
import mmap
import os
import struct
import sys
import time

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


def light_mmnsim() -> None:
    """Register an empty ``mmnsim`` package over the installed one's directory, so that importing
    mmnsim.real.cleanup loads the twin's host modules without the simulator (numba, hydra: a second more per
    stand-in run), as the guest process does (mmnsim.real.guest)."""
    import importlib.util
    import types

    package = types.ModuleType("mmnsim")
    package.__path__ = list(importlib.util.find_spec("mmnsim").submodule_search_locations)
    sys.modules["mmnsim"] = package


def standin_run(mode: str, run_id: str, pdeathsig: bool) -> None:
    light_mmnsim()
    from mmnsim.real import cleanup

    with cleanup.RunResources(run_id, time_limit_s=2.0 if mode == "timeout" else 120.0) as run:
        swap = run.swapfile(32 * MIB)
        group = run.cgroup(limit_bytes=32 * MIB, swap_bytes=32 * MIB)
        trace = run.tracing(events=("kvm:kvm_unmap_hva_range", "vmscan:mm_vmscan_lru_shrink_inactive"), buffer_kb=256)
        parent, (r, w) = os.getpid(), os.pipe()
        pid = os.fork()
        if pid == 0:  # the tenant: joins the group before it allocates, swaps a little, then waits
            try:
                if pdeathsig:
                    cleanup.die_with_parent(parent)
                os.read(r, 1)
                mem = mmap.mmap(-1, 48 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                touch(mem, 48 * MIB)
                time.sleep(600)
            finally:
                os._exit(1)  # never back into the run's with-block: the resources are the parent's
        run.child(pid)
        group.add_process(pid)
        trace.add_run_process(pid)
        trace.start()
        os.write(w, b"g")
        while group.sample().stat.get("swap", 0) == 0:  # the tenant is over its limit
            time.sleep(0.01)
        mount = next((e["path"] for e in run.record.resources if e["kind"] == "mount"), None)
        print(json.dumps({"name": run.name, "pid": os.getpid(), "child": pid, "cgroup": str(group.path),
                          "swap": str(swap.path), "instance": str(trace.instance.path), "mount": mount,
                          "record": str(run.record.path), "swept": run.swept}), flush=True)  # fmt: skip
        if mode == "fail":
            raise RuntimeError("the stand-in run fails on purpose")
        if mode in ("wait", "timeout"):
            time.sleep(600)
        trace.stop()


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "touch":
        tenant_touch(int(sys.argv[2]))
    elif what == "vm":
        tenant_vm(int(sys.argv[2]), int(sys.argv[3]))
    else:
        standin_run(sys.argv[2], sys.argv[3], "--no-pdeathsig" not in sys.argv)
