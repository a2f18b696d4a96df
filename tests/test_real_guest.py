"""The real twin's guest (mmnsim.real): a KVM guest driven from Python, in a child process.

What the twin's figures rest on: the guest's accesses run natively (KVM emulates only the exit at the end of
each chunk), a replay touches exactly the pages it is given, 2 MiB and 4 KiB guest pages both reach KVM as
such, vCPUs take their share of a batch, the long-term pin is a pin, and the guest process never outlives
its parent nor hangs it. The tests that need KVM skip without /dev/kvm or root.
"""

import ast
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mmnsim.real import pagetables, pin, program
from mmnsim.real.guest import PAGEMAP_PFN_MASK, PAGEMAP_PRESENT, Guest, GuestDied, GuestError
from mmnsim.real.hostmem import Mapping, OtherProcess
from mmnsim.real.kvm import KVM_EXIT_IO, Kvm
from mmnsim.real.machine import CODE_ADDRESS

ROOT = Path(__file__).resolve().parent.parent
WHY_NOT = (
    "no /dev/kvm on this machine"
    if not os.path.exists("/dev/kvm")
    else "needs root (KVM, /proc/PID/pagemap frames, tracefs)"
    if os.geteuid() != 0
    else None
)
needs_kvm = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


# -- without KVM -------------------------------------------------------------------------------------------


# The modules that start the twin, and only inside a function, when backend=real is asked for: the command,
# the config check (load_settings, for backend=real alone; Simulation refuses such a config before it), the bench.
LAZY_IMPORTERS = {"cli.py", "settings.py", "bench.py", "validation.py"}


def test_the_simulator_never_imports_the_real_twin():
    offenders = []
    for path in [*ROOT.joinpath("framework").glob("*.py"), *ROOT.joinpath("plugins").glob("*.py")]:
        tree = ast.parse(path.read_text())
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [a.name for a in node.names if node.level]
            if path.name in LAZY_IMPORTERS and id(node) in in_function:
                continue
            offenders += [f"{path.name}:{node.lineno}" for n in names if n in ("real", ".real") or ".real" in n]
    assert not offenders, f"the simulator imports mmnsim.real: {offenders}"


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_program_bytes_are_the_listed_assembly(tmp_path):
    binary = tmp_path / "program.bin"
    binary.write_bytes(program.CODE)
    out = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64", "-M", "intel", str(binary)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    instructions = [line.split("\t")[2] for line in out.splitlines() if re.match(r"\s+[0-9a-f]+:\t", line)]
    disassembled = [" ".join(text.split()) for text in instructions]
    _, labels = program._offsets(program.LISTING)
    listed = []
    for _, asm, _ in program.LISTING:  # objdump names a jump's target by its address
        mnemonic, *operand = asm.split(" ", 1)
        if operand and operand[0] in labels:
            asm = f"{mnemonic} {labels[operand[0]]:#x}"
        listed.append(" ".join(asm.split()).replace(", ", ","))  # objdump writes operands without spaces
    assert disassembled == listed


def _walk(tables: np.ndarray, base: int, cr3: int, address: int) -> int | None:
    """Translate ``address`` through the tables as the MMU does (None: not mapped, or not user-writable)."""
    table = (cr3 - base) >> 12
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = int(tables[table, (address >> shift) & 511])
        if entry & pagetables.TABLE != pagetables.TABLE:
            return None
        frame = entry & 0x000FFFFFFFFFF000
        if shift == 21 and entry & pagetables.PS or level == 3:
            assert entry & pagetables.A and entry & pagetables.D
            return (frame & ~((1 << shift) - 1)) | (address & ((1 << shift) - 1))
        table = (frame - base) >> 12
    return None


@pytest.mark.parametrize("huge", [True, False])
def test_the_page_tables_identity_map_exactly_the_regions(huge):
    regions = [(0, 4 << 20), (1 << 30, (1 << 30) + (6 << 20)), (3 << 30, (3 << 30) + (2 << 20))]
    base = 0x3000
    tables = np.zeros((pagetables.table_pages(regions, huge), 512), dtype=np.uint64)
    cr3 = pagetables.build(tables, base, regions, huge)
    rng = np.random.default_rng(1)
    for start, end in regions:
        for address in [start, end - 8, *rng.integers(start, end, 50).tolist()]:
            assert _walk(tables, base, cr3, address) == address
    for address in [(4 << 20), (1 << 30) - 8, (1 << 30) + (6 << 20), 2 << 30, (3 << 30) + (2 << 20)]:
        assert _walk(tables, base, cr3, address) is None
    leaf_levels = {int(e) & pagetables.PS for e in tables[2:].ravel() if int(e) & pagetables.A}
    assert leaf_levels == ({pagetables.PS} if huge else {0})


def test_auto_pin_falls_back_to_mlock_and_says_why(monkeypatch):
    def refuse(address, length):
        raise OSError(1, "io_uring_setup failed: Operation not permitted")

    monkeypatch.setattr(pin, "IoUringPin", refuse)
    with Mapping(1 << 20) as mapping:
        held, note = pin.pin(mapping, "auto")
        try:
            assert held.method == "mlock" and "fell back to mlock" in note and "not permitted" in note
        finally:
            held.close()
        with pytest.raises(OSError, match="cannot pin guest memory with io_uring"):
            pin.pin(mapping, "io_uring")
        with pytest.raises(ValueError, match="accepted: auto, io_uring, mlock"):
            pin.pin(mapping, "gup")


def test_another_processs_pages_are_advised_through_a_pidfd_and_a_dead_pid_is_named():
    """hostmem.OtherProcess: process_madvise(2) through a pidfd, as mmnsim-calibrate's guest_mode pages out a
    guest's pages from outside its process. MADV_COLD on a child's pages works (no swap needed); a bad range
    and a pid that does not exist are refused with the call named."""
    code = (
        "import ctypes, mmap, time; m = mmap.mmap(-1, 1 << 20); m.write(b'x' * (1 << 20)); "
        "print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        start = int(child.stdout.readline())
        with OtherProcess(child.pid) as other:
            other.madvise(start, 1 << 20, "cold")
            with pytest.raises(OSError, match=r"process_madvise\(.*cold\) failed"):
                other.madvise(start + 1, 4096, "cold")  # not page-aligned: EINVAL
    finally:
        child.kill()
        child.wait()
    with pytest.raises(OSError, match=r"pidfd_open\(\d+\) failed"):
        OtherProcess(2**22 + 7)  # above pid_max's largest value: no such process


# -- a real guest -------------------------------------------------------------------------------------------


@contextmanager
def trace_instance(event: str, tids: list[int]):
    """A tracing instance of this test's own, on a tracefs mount of its own, recording ``event`` for ``tids``;
    all of it removed on the way out (the top-level buffer is never touched)."""
    mount = tempfile.mkdtemp(prefix="mmnsim-test-tracefs-")
    subprocess.run(["mount", "-t", "tracefs", "nodev", mount], check=True)
    try:
        instance = Path(mount, "instances", f"mmnsim-test-{os.getpid()}-{threading.get_native_id()}")
        instance.mkdir()
        enable = instance / "events" / event / "enable"
        try:
            (instance / "set_event_pid").write_text(" ".join(map(str, tids)))
            enable.write_text("1")
            yield instance
        finally:
            enable.write_text("0")
            instance.rmdir()
    finally:
        subprocess.run(["umount", mount], check=True)
        os.rmdir(mount)


def emulated_instructions(instance: Path) -> list[tuple[int, int]]:
    """(thread id, rip) of each kvm_emulate_insn in the instance's buffer, which must not have overrun."""
    for stats in instance.glob("per_cpu/cpu*/stats"):
        assert "overrun: 0" in stats.read_text(), f"{stats}: the trace buffer lost events"
    pattern = re.compile(r"^\s*.*-(\d+)\s+\[\d+\].*kvm_emulate_insn: [0-9a-f]+:([0-9a-f]+):")
    lines = (instance / "trace").read_text().splitlines()
    return [(int(m[1]), int(m[2], 16)) for line in lines if (m := pattern.match(line))]


def run_real_mode_guest() -> None:
    """The control: a CPL0 guest in real mode (``mov al, 1; out 0xe9, al`` at 0x1000), which KVM emulates."""
    with Mapping(1 << 20) as memory, Kvm() as kvm, kvm.create_vm() as vm:
        ctypes.memmove(memory.address + 0x1000, bytes.fromhex("b001 e6e9"), 4)
        vm.set_user_memory_region(0, 0, memory.size, memory.address)
        with vm.create_vcpu(0) as vcpu:
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags = 0x1000, 0x2
            vcpu.set_regs(regs)
            assert vcpu.run() == KVM_EXIT_IO


@needs_kvm
def test_the_replay_runs_natively_only_the_exit_is_emulated():
    chunk = 4096
    with Guest(32, vcpus=2, chunk_accesses=chunk) as guest:
        tids = [int(t) for t in os.listdir(f"/proc/{guest.pid}/task")]
        rng = np.random.default_rng(2)
        pages = rng.integers(0, guest.ram_pages, 30_000)
        writes = rng.random(pages.size) < 0.5
        me = threading.get_native_id()
        with trace_instance("kvm/kvm_emulate_insn", [*tids, me]) as instance:
            before = guest.vcpu_stats()
            guest.run(pages, writes)  # first touches included: host faults, shadow faults
            after = guest.vcpu_stats()
            run_real_mode_guest()
            events = emulated_instructions(instance)
    shares = np.diff(-((-np.arange(3) * pages.size) // 2))
    exits = int(sum(-(-shares // chunk)))
    in_guest = Counter(rip for tid, rip in events if tid in tids)
    assert in_guest == {CODE_ADDRESS + program.EXIT: exits}, "an access was emulated, not run natively"
    assert sum(a["insn_emulation"] - b["insn_emulation"] for a, b in zip(after, before, strict=True)) == exits
    control = {rip for tid, rip in events if tid == me}
    assert 0x1000 in control, "the control guest at CPL0 was not seen emulated: the check sees nothing"


@needs_kvm
def test_a_replay_touches_exactly_the_pages_asked():
    with Guest(16) as guest:
        guest.madvise("nohugepage")
        rng = np.random.default_rng(3)
        chosen = rng.permutation(guest.ram_pages)[:1500]
        written, read = chosen[:1000], chosen[1000:]
        pages = np.concatenate([written, read, written[:200]])  # a page written, then read again
        writes = np.concatenate([np.ones(1000, bool), np.zeros(500, bool), np.zeros(200, bool)])
        order = rng.permutation(pages.size)
        guest.run(pages[order], writes[order])
        entries = guest.pagemap()
    present = np.flatnonzero(entries & np.uint64(PAGEMAP_PRESENT))
    assert np.array_equal(present, np.sort(chosen))
    frames = entries & np.uint64(PAGEMAP_PFN_MASK)
    zero_page = np.unique(frames[read])
    assert zero_page.size == 1, "pages only read map the shared zero page"
    assert np.unique(frames[written]).size == written.size and zero_page[0] not in frames[written]


def mappings(pid: int) -> list[tuple[int, int, set[str], int]]:
    """Each mapping of process ``pid``: start, end, its VmFlags, and its Locked bytes (/proc/PID/smaps)."""
    out: list = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            out.append([lo, hi, set(), 0])
        elif head == "VmFlags:":
            out[-1][2] = set(line.split()[1:])
        elif head == "Locked:":
            out[-1][3] = int(line.split()[1]) * 1024
    return [tuple(m) for m in out]


@needs_kvm
def test_the_guest_process_locks_its_own_memory_and_not_the_guests():
    """What the guest process's own code allocates once it is in the run's cgroup is charged there: locked, it
    stays out of reclaim (hostmem.lock_this_process), so reclaim takes the tenants' memory alone, as in the
    model, where the harness's pages were reclaimed and refaulted beside them. Guest RAM stays unlocked."""
    with Guest(16) as guest:
        guest.madvise("nohugepage")
        guest.run(np.arange(guest.ram_pages), np.ones(guest.ram_pages, bool))
        maps = mappings(guest.pid)
        start, end = guest.ram_range
    ram = [m for m in maps if m[0] < end and m[1] > start]  # (unlocked, it may merge with a neighbour)
    assert ram and all("lo" not in flags and locked == 0 for _, _, flags, locked in ram), "guest RAM is locked"
    own = [m for m in maps if m not in ram]
    assert sum("lo" in flags for _, _, flags, _ in own) > len(own) // 2, "the process's own memory is not locked"
    assert sum(locked for *_, locked in own) > 1 << 20


def test_a_process_that_may_not_lock_its_memory_is_told_what_it_needs():
    import resource

    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("root has CAP_IPC_LOCK, and setpriv (util-linux), which drops it, is not installed")
    drop = ["setpriv", "--bounding-set", "-ipc_lock"] if root else []  # root's capabilities after exec: its bounds
    code = "from mmnsim.real.hostmem import lock_this_process; lock_this_process()"

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 16, 1 << 16))

    done = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=small_limit)  # fmt: skip
    assert done.returncode != 0
    assert "mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) failed" in done.stderr
    assert "it needs CAP_IPC_LOCK, which root has, or an RLIMIT_MEMLOCK of unlimited" in done.stderr


@needs_kvm
@pytest.mark.parametrize("guest_thp", [True, False])
def test_guest_page_size_reaches_kvm(guest_thp):
    with Guest(16, guest_thp=guest_thp) as guest:
        guest.madvise("hugepage")  # the host backs guest RAM with THPs either way
        before = guest.stats()
        guest.run(np.arange(guest.ram_pages), np.ones(guest.ram_pages, bool))
        after = guest.stats()
    huge_pages = guest.ram_pages // 512
    if guest_thp:  # a guest 2 MiB page over a host THP: one 2 MiB spte
        assert after["pages_2m"] == huge_pages and after["pf_fixed"] - before["pf_fixed"] == huge_pages
    else:  # a guest 4 KiB page gets a 4 KiB spte whatever backs it
        assert after["pages_2m"] == 0 and after["pages_4k"] - before["pages_4k"] >= guest.ram_pages


@needs_kvm
def test_vcpus_replay_their_share_of_a_batch():
    with Guest(16, vcpus=3, chunk_accesses=1024) as guest:
        guest.madvise("nohugepage")
        before = guest.vcpu_stats()
        n = guest.ram_pages - 5  # not a multiple of 3: rounding decides the shares
        guest.run(np.arange(n), np.ones(n, bool))  # each page written once, in order
        after = guest.vcpu_stats()
        present = (guest.pagemap() & np.uint64(PAGEMAP_PRESENT)) != 0
    share = np.bincount((np.arange(n) * 3) // n)  # the simulator's split: access i to accessor i * nv // n
    faults = np.array([a["pf_fixed"] - b["pf_fixed"] for a, b in zip(after, before, strict=True)])
    assert np.array_equal(faults, share), "each vCPU faults in exactly the pages of its share"
    assert present[:n].all() and not present[n:].any()


@needs_kvm
def test_the_long_term_pin_holds_pages_mlock_does_not(tmp_path):
    def pins() -> tuple[int, int]:
        Path("/proc/sys/vm/stat_refresh").write_text("1")  # fold the per-CPU counters into the totals
        stats = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
        return int(stats["nr_foll_pin_acquired"]), int(stats["nr_foll_pin_released"])

    for method in ("io_uring", "mlock"):
        with Guest(8) as guest:
            guest.madvise("nohugepage")
            guest.run(np.arange(guest.ram_pages), np.ones(guest.ram_pages, bool))
            guest.madvise("hugepage")
            acquired, released = pins()
            assert guest.pin(method) == (method, "")
            pinned = pins()[0] - acquired
            frames = guest.pagemap() & np.uint64(PAGEMAP_PFN_MASK)
            try:  # a collapse into THPs moves every page: a pinned page cannot move
                guest.madvise("collapse")
                collapsed = True
            except GuestError as e:
                assert "Resource temporarily unavailable" in str(e)
                collapsed = False
            moved = int((frames != (guest.pagemap() & np.uint64(PAGEMAP_PFN_MASK))).sum())
            guest.unpin()
            unpinned = pins()[1] - released
        if method == "io_uring":
            assert pinned >= guest.ram_pages and unpinned >= guest.ram_pages
            assert not collapsed and moved == 0
        else:
            assert collapsed and moved == guest.ram_pages, "mlock leaves pages movable"


@needs_kvm
def test_bad_requests_are_one_line_errors_and_leave_nothing():
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="does not fit below 64 GiB"):
        Guest(70_000)
    with Guest(8) as guest:
        with pytest.raises(ValueError, match=r"page 2048 is outside guest RAM \(pages 0 to 2047\)"):
            guest.run(np.array([1, 2048]), np.array([True, False]))
        with pytest.raises(ValueError, match="unknown madvise advice 'huge'"):
            guest.madvise("huge")
        guest.run(np.array([1]), np.array([True]))  # still serves
    assert len(os.listdir("/proc/self/fd")) == fds


@needs_kvm
def test_a_killed_guest_is_an_error_not_a_hang():
    with Guest(8) as guest:
        os.kill(guest.pid, signal.SIGKILL)
        with pytest.raises(GuestDied, match=r"was killed by SIGKILL .* during 'run'"):
            guest.run(np.arange(10), np.zeros(10, bool))
    with Guest(8, timeout=1.0) as guest:
        os.kill(guest.pid, signal.SIGSTOP)  # stops answering
        with pytest.raises(GuestError, match="gave no answer to 'stats' within 1 s; it was killed"):
            guest.stats()
        assert wait_gone(guest.pid)


@needs_kvm
def test_the_guest_goes_with_ctrl_c_and_with_its_parent():
    with pytest.raises(KeyboardInterrupt), Guest(8) as guest:
        pid = guest.pid
        raise KeyboardInterrupt
    assert wait_gone(pid, 1.0)
    parent = subprocess.Popen(
        [sys.executable, "-c", "from mmnsim.real.guest import Guest; g = Guest(8); print(g.pid, flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid = None
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
        os.kill(pid, signal.SIGSTOP)  # busy or stuck, not reading its socket: only the kernel can end it
        parent.kill()
        parent.wait()
        assert wait_gone(pid), "the guest process outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
