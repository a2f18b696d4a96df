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

Everything a run creates on the machine is named ``mmnsim-real-<run id>-<pid>`` (``cleanup.run_name``).
The simulator never imports this subpackage (a test checks it): it is only the real backend's.
"""

import signal

from ..config import ConfigError


class HostError(ConfigError):
    """The machine cannot do what the run asks (no /dev/kvm, not root, too little memory or disk, ...): one
    line naming what is missing and what would do, exit status 2 as for any bad input (a ConfigError)."""


# The signals that stop a run (cleanup.RunResources handles them in the main thread).
RUN_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM})


def block_run_signals() -> None:
    """For a thread a run starts (the trace reader, ...): leave the signals that stop the run to the main
    thread, so that they interrupt what it waits on (the kernel gives a process's signal to any one thread
    that does not block it, and Python runs handlers in the main thread only when it gets there)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, RUN_SIGNALS)
