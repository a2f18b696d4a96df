"""The guest process: serves one ``Machine`` to the parent that started it, request by request.

Started by ``mmnsim.real.guest.Guest`` as ``python -c BOOT SOCKET_FD BUFFER_FD PARENT_PID`` (``python -m
mmnsim.real.child ...`` works too, but imports the whole simulator first). It dies with its parent
(PR_SET_PDEATHSIG, SIGKILL), ignores SIGINT (a Ctrl-C in the terminal is the parent's to handle: the parent
then ends this process), reports ``("ready", {"pid", "rss_bytes"})`` and waits: no guest memory exists
until the parent's ``create`` request, so the parent can first move this process into a memory cgroup.

Requests and answers are pickled tuples over a Unix socket (multiprocessing.connection framing):

    ("create", {kind, memory_mib, vcpus, guest_thp, chunk_accesses})  -> {"ram_range", "ram_gpa", "vcpu_tids"}
        kind "kvm": a KVM guest (mmnsim.real.machine); "process": plain memory the process touches itself
        (mmnsim.real.plain: a tenant of ``processes``)
    ("run", {"counts": [per vCPU]})      -> seconds: vCPU v replays counts[v] entries of its buffer region
    ("madvise", {advice, first_page, pages})
    ("mprotect", {protection, first_page, pages})
    ("timed", {"op": "madvise" or "mprotect", "args": {...}})  -> seconds: that call, timed here (no round trip)
    ("pin", {"method"})                  -> (method used, note)
    ("unpin", {})
    ("stats", {})                        -> (VM statistics, [each vCPU's statistics]), as kvm.Stat by name
    ("exit", {})

Each answer is ``("ok", result)`` or ``("error", kind, message)``; the access lists themselves never pass
through the socket: they are in the shared buffer (BUFFER_FD, the parent's memfd), which the guest reads
directly as its buffer memslot.
"""

import ctypes
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection

from .hostmem import lock_this_process
from .machine import GuestError, Machine, name_this_thread
from .plain import PlainMemory

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
EXPECTED_ERRORS = (OSError, GuestError, ValueError)  # reported in one line; anything else with its traceback


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (or now, if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:  # the parent died before the prctl
        os._exit(1)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (VmRSS in /proc/PID/status), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _Server:
    def __init__(self, buffer_fd: int):
        self.buffer_fd = buffer_fd
        self.machine: Machine | PlainMemory | None = None

    def _need_machine(self) -> Machine | PlainMemory:
        if self.machine is None:
            raise GuestError("no guest yet: send 'create' first")
        return self.machine

    def create(self, kind: str, memory_mib: int, vcpus: int, guest_thp: bool, chunk_accesses: int) -> dict:
        if self.machine is not None:
            raise GuestError("this process already has its guest")
        lock_this_process()  # in the run's cgroup by now: the harness's own pages stay out of reclaim
        if kind == "kvm":
            self.machine = machine = Machine(memory_mib, vcpus, guest_thp, self.buffer_fd, chunk_accesses)
            ram_gpa = machine.layout.ram_start
        elif kind == "process":
            self.machine = machine = PlainMemory(memory_mib, self.buffer_fd, chunk_accesses)
            ram_gpa = 0
        else:
            raise ValueError(f"unknown kind {kind!r}; accepted: kvm, process")
        return {"ram_range": machine.ram_range, "ram_gpa": ram_gpa, "vcpu_tids": machine.vcpu_tids}

    def run(self, counts: list[int]) -> float:
        return self._need_machine().run(counts)

    def madvise(self, advice: str, first_page: int, pages: int | None) -> None:
        self._need_machine().madvise(advice, first_page, pages)

    def mprotect(self, protection: str, first_page: int, pages: int | None) -> None:
        self._need_machine().mprotect(protection, first_page, pages)

    def timed(self, op: str, args: dict) -> float:
        """One ``madvise`` or ``mprotect`` call, timed in this process: its duration without the socket's round
        trip (``mmnsim.real.calibrate`` measures costs of a few microseconds with it)."""
        if op not in ("madvise", "mprotect"):
            raise ValueError(f"cannot time {op!r}; accepted: madvise, mprotect")
        call = getattr(self._need_machine(), op)
        start = time.perf_counter()
        call(**args)
        return time.perf_counter() - start

    def pin(self, method: str) -> tuple[str, str]:
        return self._need_machine().pin(method)

    def unpin(self) -> None:
        self._need_machine().unpin()

    def stats(self) -> tuple:
        return self._need_machine().stats()

    def close(self) -> None:
        if self.machine is not None:
            self.machine.close()
            self.machine = None


def serve(conn: Connection, buffer_fd: int) -> None:
    """Answer requests until ``exit`` or until the parent's end of the socket closes."""
    server = _Server(buffer_fd)
    try:
        while True:
            try:
                op, args = conn.recv()
            except EOFError:
                return
            if op == "exit":
                server.close()
                conn.send(("ok", None))
                return
            handler = (
                getattr(server, op, None)
                if op in ("create", "run", "madvise", "mprotect", "timed", "pin", "unpin", "stats")
                else None
            )
            try:
                if handler is None:
                    raise GuestError(f"unknown request {op!r}")
                conn.send(("ok", handler(**args)))
            except EXPECTED_ERRORS as e:
                conn.send(("error", type(e).__name__, str(e)))
            except Exception as e:
                conn.send(("error", type(e).__name__, traceback.format_exc()))
    finally:
        server.close()


def main(argv: list[str]) -> None:
    socket_fd, buffer_fd, parent_pid = (int(a) for a in argv)
    _die_with_parent(parent_pid)
    name_this_thread("mmnsim-guest")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(socket_fd)
    conn.send(("ready", {"pid": os.getpid(), "rss_bytes": rss_bytes()}))
    serve(conn, buffer_fd)


if __name__ == "__main__":
    main(sys.argv[1:])
