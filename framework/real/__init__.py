"""The real twin (``backend=real``): a mmnsim scenario run on this machine's kernel, with a real KVM guest.

The simulator never imports this package (a test checks it): it is only the real backend's; the command, the
config check and mmnsim-bench import it inside a function, for backend=real. One module per concern
(docs/real.md, with docs/real-guest.md and docs/real-host.md as appendices).

The run and what it may run:

- ``run``: one run: preflight, resources, tenants, the host as configured, the replay tick by tick, the counts.
- ``config``: ``RealConfig`` (the ``real.*`` keys), and the refusals of what this machine cannot run.
- ``machineinfo``: the machine's kernel, CPU, KVM module and paging, THP mode, cgroup version.

The guest, created through the KVM ioctls from Python and replaying the simulation's own access list natively:

- ``kvm``: the KVM ioctls (include/uapi/linux/kvm.h): VM, memslots, vCPUs, KVM_RUN, binary statistics.
- ``hostmem``: aligned anonymous and shared mappings, and madvise/mlock on them.
- ``pagetables``: the guest's 4-level page tables, 2 MiB or 4 KiB leaves.
- ``program``: the guest program that replays an access list natively at CPL3, and its list encoding.
- ``machine``: the VM with its memslots and vCPU threads, in the guest process.
- ``pin``: the long-term pin stand-in (io_uring fixed buffers; mlock as the fallback).
- ``plain``: a plain tenant's memory (``processes``), touched by its own process with numpy.
- ``child``: the guest process's request loop (a KVM guest, or a plain tenant's memory).
- ``guest``: ``Guest``, the parent's handle on a guest in its child process: the API a run calls.
- ``replaybench``: how fast the guest replays accesses that do not fault.

The host side, which shapes and observes the machine for a run:

- ``cgroup``: the run's memory cgroup (``host.memory_mib`` as a limit), its tasks, its statistics.
- ``swapfile``: the run's swap file (``host.swap_mib``).
- ``tracing``: a tracefs instance of the run's own, its events, a reader draining it, and their counts.
- ``counters``: /proc/vmstat, memory.stat and per-task fault counts, and which kernel source gives each
  mmnsim metric.
- ``cleanup``: the name of a run's resources, their registry, their removal on every exit path, and the
  removal of a killed run's leftovers by the next run.
- ``preflight``: the checks a run makes before it changes anything, one clear line per failure.
- ``errors``: ``HostError``, what the machine cannot do (a ConfigError: exit status 2).
- ``mounts``: /proc/self/mountinfo, read.

Everything a run creates on the machine is named ``mmnsim-real-<run id>-<pid>`` (``cleanup.run_name``).
"""
