"""A real KVM guest in a child process, driven from here: the API the real twin's run calls.

    with Guest(memory_mib=1536, vcpus=2, guest_thp=True, before_ram=cgroup.add) as guest:
        guest.madvise("hugepage")                       # host THP for guest RAM (host.thp)
        guest.run(np.arange(guest.ram_pages), np.ones(guest.ram_pages, bool))   # the boot pass
        before = guest.stats()
        seconds = guest.run(pages, writes)              # the workload's accesses, natively in the guest
        after = guest.stats()

The guest runs in a child process (``mmnsim.real.child``) because the memory cgroup that stands for the host
can OOM-kill it: the parent survives, reports the death as one ``GuestDied`` error, and cleans up. The
child is a fresh interpreter (not a fork of this process, which may hold numba's threads and locks); it dies
with this process's thread that created it (PR_SET_PDEATHSIG), so create a ``Guest`` from a thread that
outlives it, such as the main thread. ``before_ram(pid)`` is called once the child is ready and before it
allocates any guest memory: the place to move it into a memory cgroup (all of it, ``cgroup.procs``; its vCPU
threads are created later, inside the group). ``harness_rss_bytes`` is the child's resident memory at that
point (the interpreter, numpy and these modules): charged where the child was, not to the cgroup.

The access lists never pass through the socket: they go into a shared buffer (a memfd this process creates
and fills, so its pages are charged to this process, not to the guest's cgroup), which the guest reads as its
buffer memslot. ``run`` splits a batch among the vCPUs as the simulator does (mmnsim.access ``_run``:
vCPU ``v`` issues accesses ``[ceil(v n / nv), ceil((v + 1) n / nv))``), and feeds each vCPU's share through
its region of the buffer in chunks of ``chunk_accesses``; all vCPUs run each chunk concurrently.

Every wait has a timeout: a child that dies (OOM-killed, crashed) or stops answering is reported as one
``GuestError`` line, never a hang; ``close()`` (or leaving the ``with`` block, on any exception, Ctrl-C
included) ends the child, and the kernel frees its VM, memory and pins with it.
"""

import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from . import program
from .child import rss_bytes
from .hostmem import PAGE_SIZE
from .kvm import Stat
from .machine import ENTRY_BYTES, GuestError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the directory holding the mmnsim package's modules

# The child's command line. It registers an empty ``mmnsim`` package over PACKAGE_DIR and imports
# mmnsim.real.child from it, so the child loads the real twin's modules and numpy, not the simulator's
# (numba, hydra, polars: about 2 s to import and tens of MiB more resident). -P keeps the working directory
# off sys.path.
_BOOT = (
    "import sys, types; m = types.ModuleType('mmnsim'); m.__path__ = [sys.argv[1]]; sys.modules['mmnsim'] = m; "
    "from mmnsim.real.child import main; main(sys.argv[2:])"
)

# No BLAS thread pools in the guest process (numpy starts one per core at import; the child does no linear
# algebra): its only threads are its main thread and the vCPUs.
_CHILD_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# /proc/PID/pagemap entries (Documentation/admin-guide/mm/pagemap.rst)
PAGEMAP_PRESENT = 1 << 63
PAGEMAP_SWAPPED = 1 << 62
PAGEMAP_PFN_MASK = (1 << 55) - 1  # the page frame number (zero unless CAP_SYS_ADMIN)


class GuestDied(GuestError):
    """The guest process ended without being asked to (killed, or crashed)."""


def _end(proc: subprocess.Popen) -> None:
    """SIGKILL the child if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class Guest:
    """A KVM guest of ``memory_mib`` MiB and ``vcpus`` vCPUs, running in a child process.

    ``guest_thp``: the guest maps its RAM with 2 MiB pages (else 4 KiB). ``chunk_accesses``: entries per vCPU
    per exit to the host (a multiple of 1024). ``timeout``: seconds to wait for any one answer from the child
    (``start_timeout`` for its start). ``kind="process"``: no KVM, the child touches its memory itself, one
    thread (``mmnsim.real.plain``: a plain tenant; ``Process`` makes one). Not thread-safe: one thread drives
    a guest. ``accesses_done`` and ``writes_done`` count what it completed, chunk by chunk (a batch cut short
    by the child's death counts its completed chunks).
    """

    def __init__(self, memory_mib: int, vcpus: int = 1, guest_thp: bool = False, *, chunk_accesses: int = 1 << 20,
                 before_ram: Callable[[int], None] | None = None, timeout: float = 600.0,
                 start_timeout: float = 60.0, kind: str = "kvm"):  # fmt: skip
        if chunk_accesses < 1024 or chunk_accesses % 1024:
            raise ValueError(f"chunk_accesses must be a positive multiple of 1024, got {chunk_accesses}")
        if vcpus < 1:
            raise ValueError(f"a guest needs at least one vCPU, got {vcpus}")
        self.memory_mib, self.vcpus, self.guest_thp = memory_mib, vcpus, guest_thp
        self.ram_pages = (memory_mib << 20) // PAGE_SIZE
        self.chunk_accesses = chunk_accesses
        self.timeout = timeout
        self.kind = kind
        self.accesses_done = self.writes_done = 0
        self.chunk_exits = 0  # exits to the host the replay made (KVM: one emulated `out` per vCPU per chunk)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._buffer: mmap.mmap | None = None
        self._lists: np.ndarray | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close()); the child's output, read if it dies
        try:
            self._start(start_timeout)
            if before_ram is not None:
                before_ram(self.pid)
            args = {"kind": kind, "memory_mib": memory_mib, "vcpus": vcpus, "guest_thp": guest_thp,
                    "chunk_accesses": chunk_accesses}  # fmt: skip
            info = self._call("create", args)
            self.ram_range: tuple[int, int] = info["ram_range"]  # host virtual [start, end) of guest RAM
            self.ram_gpa: int = info["ram_gpa"]  # guest-physical address of guest page 0
            self.vcpu_tids: list[int] = info["vcpu_tids"]  # host thread ids of the vCPUs, for trace filters
        except BaseException:
            self.close()
            raise

    def _start(self, timeout: float) -> None:
        buffer_bytes = self.vcpus * self.chunk_accesses * ENTRY_BYTES
        memfd = os.memfd_create("mmnsim-guest-lists", os.MFD_CLOEXEC)
        parent_end, child_end = socket.socketpair()
        try:
            os.ftruncate(memfd, buffer_bytes)
            os.posix_fallocate(memfd, 0, buffer_bytes)  # allocated, and charged, here
            self._buffer = mmap.mmap(memfd, buffer_bytes)
            self._lists = np.frombuffer(self._buffer, dtype=np.uint32).reshape(self.vcpus, self.chunk_accesses)
            arguments = (PACKAGE_DIR, child_end.fileno(), memfd, os.getpid())
            command = [sys.executable, "-P", "-c", _BOOT, *map(str, arguments)]
            self._proc = subprocess.Popen(command, pass_fds=(child_end.fileno(), memfd), stdin=subprocess.DEVNULL,
                                          stdout=self._stderr, stderr=self._stderr, env=_CHILD_ENV)  # fmt: skip
            self._finalizer = weakref.finalize(self, _end, self._proc)  # if never closed: at exit at the latest
        finally:
            os.close(memfd)  # the child has its own descriptor, this process its mapping
            child_end.close()
        self._conn = Connection(parent_end.detach())
        kind, ready = self._receive("start", timeout)
        self.pid: int = ready["pid"]
        self.harness_rss_bytes: int = ready["rss_bytes"]  # the child's resident memory before guest RAM

    # -- talking to the child ---------------------------------------------------------------------------

    def _receive(self, what: str, timeout: float):
        try:
            answered = self._conn.poll(timeout)
            message = self._conn.recv() if answered else None
        except (EOFError, OSError):
            raise self._died(what) from None
        if not answered:
            _end(self._proc)
            raise GuestError(f"the guest process (pid {self._proc.pid}) gave no answer to {what!r} within "
                             f"{timeout:g} s; it was killed")  # fmt: skip
        return message

    def _call(self, op: str, args: dict, timeout: float | None = None):
        if self._conn is None:
            raise GuestError(f"cannot {op!r}: the guest is closed")
        try:
            self._conn.send((op, args))
        except OSError:
            raise self._died(op) from None
        answer = self._receive(op, self.timeout if timeout is None else timeout)
        if answer[0] == "ok":
            return answer[1]
        _, kind, message = answer
        raise (ValueError if kind == "ValueError" else GuestError)(f"guest {op}: {message}")

    def _died(self, what: str) -> GuestDied:
        try:
            status = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _end(self._proc)
            status = self._proc.returncode
        if status < 0:
            how = f"was killed by {signal.Signals(-status).name}"
            if -status == signal.SIGKILL:
                how += " (the memory cgroup's OOM killer, or another kill)"
        else:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            how = f"exited with status {status}" + (f": {lines[-1]}" if lines else "")
        self._conn.close()
        self._conn = None
        return GuestDied(f"the guest process (pid {self._proc.pid}) {how}, during {what!r}")

    # -- the guest -----------------------------------------------------------------------------------------

    def run(self, pages: np.ndarray, writes: np.ndarray) -> float:
        """Replay accesses ``pages[i]`` (guest page numbers) with ``writes[i]`` (True: a store) natively in the
        guest, split among the vCPUs as the simulator splits them, all vCPUs concurrently. Returns the guest's
        wall time in seconds: the sum over chunks of first vCPU start to last vCPU exit (this process's
        encoding and the socket round trips are not in it)."""
        pages, writes = np.asarray(pages), np.asarray(writes)
        if pages.ndim != 1 or writes.shape != pages.shape:
            raise ValueError(f"pages and writes must be 1-D of one length, got shapes {pages.shape} and {writes.shape}")
        if not np.issubdtype(pages.dtype, np.integer) or writes.dtype != np.bool_:
            raise ValueError(f"pages must be integers and writes booleans, got {pages.dtype} and {writes.dtype}")
        n = pages.size
        if n == 0:
            return 0.0
        low, high = int(pages.min()), int(pages.max())
        if low < 0 or high >= self.ram_pages:
            bad = low if low < 0 else high
            raise ValueError(f"page {bad} is outside guest RAM (pages 0 to {self.ram_pages - 1})")
        bounds = -((-np.arange(self.vcpus + 1) * n) // self.vcpus)  # ceil(v n / nv), as mmnsim.access _run
        position, end = bounds[:-1].copy(), bounds[1:]
        seconds = 0.0
        while (counts := np.minimum(end - position, self.chunk_accesses)).any():
            for v in np.flatnonzero(counts):
                first, count = position[v], counts[v]
                program.encode(pages[first : first + count], writes[first : first + count], self._lists[v, :count])
            seconds += self._call("run", {"counts": counts.tolist()})
            self.accesses_done += int(counts.sum())
            self.chunk_exits += int(np.count_nonzero(counts))
            self.writes_done += sum(
                int(np.count_nonzero(writes[p : p + c])) for p, c in zip(position, counts, strict=True)
            )
            position += counts
        return seconds

    def madvise(self, advice: str, first_page: int = 0, pages: int | None = None) -> None:
        """``madvise(2)`` of guest pages ``[first_page, first_page + pages)`` (to the end when ``pages`` is None),
        in the guest process: ``hugepage``, ``nohugepage``, ``dontneed``, ``pageout``, ``cold``, ...
        (``mmnsim.real.hostmem.ADVICE``)."""
        self._call("madvise", {"advice": advice, "first_page": first_page, "pages": pages})

    def mprotect(self, protection: str, first_page: int = 0, pages: int | None = None) -> None:
        """``mprotect(2)`` of guest pages to ``none``, ``read`` or ``rw`` (``mmnsim.real.hostmem.PROTECTION``): the
        pages stay, and KVM is told with one MMU_NOTIFY_PROTECTION_VMA invalidation per page-table range."""
        self._call("mprotect", {"protection": protection, "first_page": first_page, "pages": pages})

    def pin(self, method: str = "auto") -> tuple[str, str]:
        """Pin all guest RAM (``mmnsim.real.pin``: io_uring's long-term pin, or mlock). Returns the method used
        and a note: empty, or why ``auto`` fell back to mlock."""
        return tuple(self._call("pin", {"method": method}))

    def unpin(self) -> None:
        self._call("unpin", {})

    def kvm_stats(self) -> tuple[dict[str, Stat], list[dict[str, Stat]]]:
        """KVM's binary statistics now, all of them: the VM's, and each vCPU's (histograms included)."""
        return self._call("stats", {})

    def stats(self) -> dict[str, int]:
        """KVM's scalar statistics now, by name: the VM's (remote_tlb_flush, pages_4k, pages_2m, ...) and the
        vCPUs' (pf_fixed, pf_taken, exits, ...) summed over the vCPUs (a ``peak`` one: the largest)."""
        vm, vcpus = self.kvm_stats()
        if not vcpus:  # a plain process: no KVM
            return {}
        totals = {name: stat.value for name, stat in vm.items() if len(stat.values) == 1}
        for name, stat in vcpus[0].items():
            if len(stat.values) == 1:
                values = [each[name].value for each in vcpus]
                totals[name] = max(values) if stat.kind == "peak" else sum(values)
        return totals

    def vcpu_stats(self) -> list[dict[str, int]]:
        """Each vCPU's scalar statistics now."""
        return [{n: s.value for n, s in each.items() if len(s.values) == 1} for each in self.kvm_stats()[1]]

    def pagemap(self, first_page: int = 0, pages: int | None = None) -> np.ndarray:
        """The host's /proc/PID/pagemap entries (uint64) of guest pages ``[first_page, first_page + pages)``:
        ``& PAGEMAP_PRESENT`` resident, ``& PAGEMAP_SWAPPED`` in swap, ``& PAGEMAP_PFN_MASK`` the frame."""
        pages = self.ram_pages - first_page if pages is None else pages
        if first_page < 0 or pages < 0 or first_page + pages > self.ram_pages:
            raise ValueError(f"pages [{first_page}, +{pages}) are not inside guest RAM (0 to {self.ram_pages})")
        offset = (self.ram_range[0] // PAGE_SIZE + first_page) * 8
        fd = os.open(f"/proc/{self.pid}/pagemap", os.O_RDONLY)
        try:
            data = os.pread(fd, pages * 8, offset)
        finally:
            os.close(fd)
        return np.frombuffer(data, dtype=np.uint64)

    def rss_bytes(self) -> int:
        """The guest process's resident memory now (VmRSS), guest RAM included."""
        return rss_bytes(self.pid)

    # -- the end ---------------------------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """End the guest process: ask it to exit (closing its VM and memory), SIGKILL it after ``timeout`` s;
        then release the socket and the shared buffer. Safe to call twice, and after the child died."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        try:
            if proc is not None and conn is not None and proc.poll() is None:
                try:
                    conn.send(("exit", {}))
                    if conn.poll(timeout):
                        conn.recv()
                    proc.wait(timeout=timeout)
                except (OSError, EOFError, subprocess.TimeoutExpired):
                    pass
        finally:
            if proc is not None:
                _end(proc)
                self._finalizer.detach()
            if conn is not None:
                conn.close()
            self._lists = None  # the view must go before its mapping
            if self._buffer is not None:
                self._buffer.close()
                self._buffer = None
            self._stderr.close()

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(timeout=30.0 if exc_type is None else 2.0)  # after an error (Ctrl-C too), do not wait long


def Process(memory_mib: int, **options) -> Guest:  # noqa: N802 (a constructor by another name)
    """A plain tenant (``processes``): a child process that touches ``memory_mib`` MiB of its own anonymous
    memory with the access lists it is given, without KVM; the same API as ``Guest`` (``options``: as
    Guest's keyword arguments). Its ``stats()`` is empty."""
    return Guest(memory_mib, vcpus=1, guest_thp=False, kind="process", **options)
