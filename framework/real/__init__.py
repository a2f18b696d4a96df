"""The real twin: the same scenarios on this machine's kernel, with a real KVM guest (``backend=real``).

The simulator never imports this package. Modules, one per concern:

- ``kvm``: the KVM ioctls (include/uapi/linux/kvm.h): VM, memslots, vCPUs, KVM_RUN, binary statistics.
- ``hostmem``: aligned anonymous and shared mappings, and madvise/mlock on them.
- ``pagetables``: the guest's 4-level page tables, 2 MiB or 4 KiB leaves.
- ``program``: the guest program that replays an access list natively at CPL3, and its list encoding.
- ``machine``: the VM with its memslots and vCPU threads, in the guest process.
- ``pin``: the long-term pin stand-in (io_uring fixed buffers; mlock as the fallback).
- ``child``: the guest process's request loop.
- ``guest``: ``Guest``, the parent's handle on a guest in its child process: the API a run calls.
- ``replaybench``: how fast the guest replays accesses that do not fault.
"""
