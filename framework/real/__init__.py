"""The real twin (``backend=real``): a mmnsim scenario run on this machine's kernel, with a real KVM guest.

One module per concern. The host side, which shapes and observes the machine for a run:

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
The simulator never imports this subpackage (a test checks it): it is only the real backend's.
"""
