"""The real twin's host side (mmnsim.real): its cgroup, swap file, tracing and counters on this machine's
kernel, and that every resource of a run goes on every exit path, a killed run's with the next run.

The tests that change the machine need root, the memory cgroup v1 controller and tracefs (the VM ones
/dev/kvm too) and skip with the reason elsewhere. They keep to 32-160 MiB and a few seconds each, and
touch nothing not named like a run's (``mmnsim-real-<run id>-<pid>``).
"""

import contextlib
import ctypes
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import real_host_missing
from mmnsim.metrics import FRAMEWORK
from mmnsim.real import cgroup, cleanup, counters, preflight, swapfile, tracing
from mmnsim.real.errors import HostError

MIB = 1 << 20
PAGE = mmap.PAGESIZE
STANDIN = Path(__file__).with_name("real_standin.py")


WHY_NOT = real_host_missing(kvm=False)
needs_host = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm")


@contextlib.contextmanager
def tracefs_root():
    """Where tracefs is, mounted for the test (under a name of this process's, unmounted after) if nowhere."""
    root = cleanup.shared_tracefs()  # not a stand-in's own mount: it unmounts that when it ends
    if root is not None:
        yield root
        return
    mountpoint = tracing.mount_tracefs(Path("/tmp") / f"{cleanup.run_name('pytest')}{cleanup.TRACEFS_SUFFIX}")
    try:
        yield mountpoint
    finally:
        tracing.unmount_tracefs(mountpoint)


def top_level_state(root: Path) -> dict[str, str]:
    """The top-level trace buffer's settings, which belong to someone else: a run must leave them as they are."""
    names = ("set_event", "tracing_on", "buffer_size_kb", "current_tracer", "trace_options", "events/enable")
    return {n: (root / n).read_text() for n in names}


def tenant(*args: str) -> tuple[subprocess.Popen, dict]:
    """Start a tenant of real_standin.py and read its ready line."""
    proc = subprocess.Popen([sys.executable, str(STANDIN), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    return proc, json.loads(proc.stdout.readline())


def go_and_wait(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"


def finish(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def stop(proc: subprocess.Popen) -> None:
    """A tenant that did not finish (the test failed): kill it, before its cgroup goes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --- no root needed -------------------------------------------------------------------------------------


def test_a_run_name_carries_its_pid_and_nothing_else_matches():
    name = cleanup.run_name("swap demo/1", pid=4242)
    assert name == "mmnsim-real-swap_demo_1-4242"
    assert cleanup.owner_pid(name) == 4242
    assert cleanup.owner_pid(name + cleanup.SWAP_SUFFIX) == 4242
    assert cleanup.owner_pid(name + cleanup.TRACEFS_SUFFIX) == 4242
    for other in ("mmnsim-4242", "mmnsim-real-4242", "process_api", "mmnsim-real-x-0", "user-mmnsim-real-x-1"):
        assert cleanup.owner_pid(other) is None, other


def test_every_metric_has_a_real_source_or_a_reason_it_has_none():
    """A metric the twin cannot observe is absent, and says why; one it observes names its source."""
    plugin_metrics = {"young_pages_aged", "change_pte_applied", "eager_releases"}  # kvm.py, eager_release.py
    model = {m.name for m in FRAMEWORK} | plugin_metrics
    sourced = {s.metric for s in counters.SOURCES}
    assert sourced <= model, sourced - model
    assert set(counters.UNOBSERVED) <= model
    assert not sourced & set(counters.UNOBSERVED)
    assert model - sourced - set(counters.UNOBSERVED) == set()
    assert {m.name for m in counters.REAL_ONLY} == set(counters.REAL_ONLY_VALUES)
    assert not {m.name for m in counters.REAL_ONLY} & model


def test_the_simulator_never_imports_the_real_twin():
    code = ("import importlib, pkgutil, sys, mmnsim, mmnsim.plugins\n"
            "for m in [*pkgutil.iter_modules(mmnsim.__path__, 'mmnsim.'),\n"
            "          *pkgutil.iter_modules(mmnsim.plugins.__path__, 'mmnsim.plugins.')]:\n"
            "    if m.name != 'mmnsim.real':\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.startswith('mmnsim.real')))\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_unobserved_source_leaves_its_metrics_absent_not_zero():
    assert counters.metrics(counters.Observation()) == {}
    trace = tracing.TraceCounts(enabled=("kvm:kvm_age_hva",))  # kvm_unmap_hva_range was not enabled
    found = counters.metrics(counters.Observation(trace=trace, vmstat={"pswpout": 5}))
    assert found["swap_outs"] == 5 and found["young_pages_aged"] == 0 and found["trace_lost_events"] == 0
    assert "invalidations" not in found and "swap_ins" not in found and "pgscan" not in found


def test_the_docs_table_of_sources_is_current():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "real.md").read_text()
    assert counters.markdown() in doc, (
        "regenerate the table: python -c 'from mmnsim.real import counters; print(counters.markdown())'"
    )


def test_kvm_statistics_fill_their_metrics_by_the_names_this_kernel_uses():
    """The names of KVM_GET_STATS_FD on Linux 6.18 (VM: remote_tlb_flush_requests, pages_4k/2m/1g; vCPU:
    pf_fixed, tlb_flush), as mmnsim.real.guest Guest.stats() sums them; a name another KVM lacks: absent."""
    stats = {"pf_fixed": 7, "pf_taken": 9, "remote_tlb_flush_requests": 5, "remote_tlb_flush": 0, "tlb_flush": 3,
             "pages_4k": 30, "pages_2m": 10, "pages_1g": 0}  # fmt: skip
    found = counters.metrics(counters.Observation(kvm=stats))
    assert found == {"secondary_faults": 7, "tlb_flushes": 5, "remote_tlb_flush": 0, "vcpu_tlb_flushes": 3,
                     "huge_mapped_fraction": 0.25, "secondary_mapped_pages": 40}  # fmt: skip
    assert counters.metrics(counters.Observation(kvm={"pf_fixed": 1})) == {"secondary_faults": 1}
    columns = counters.with_kind_columns(found)
    assert "huge_mapped_fraction" not in columns and columns["kvm.huge_mapped_fraction"] == 0.25
    assert columns["kvm.secondary_faults"] == columns["secondary_faults"] == 7


def test_fault_counts_and_huge_pages_are_read_from_proc():
    mine = counters.process_faults(os.getpid())
    threads = counters.thread_faults(os.getpid())
    assert os.getpid() in threads and sum(t.minor for t in threads.values()) <= mine.minor
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    if "[never]" in mode:
        pytest.skip("THP is off on this machine")
    mem = mmap.mmap(-1, 8 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem.madvise(mmap.MADV_HUGEPAGE)
    for offset in range(0, 8 * MIB, PAGE):
        mem[offset] = 1
    start = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    huge = counters.anon_huge_bytes(os.getpid(), start, start + 8 * MIB)
    assert huge % (2 * MIB) == 0 and huge <= 8 * MIB
    if huge == 0:
        pytest.skip("no THP could be allocated now")
    assert counters.process_faults(os.getpid()).minor > mine.minor


def test_the_format_parser_reads_a_header_page():
    text = ("\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\tfield: local_t commit;\toffset:8;\tsize:8;"
            "\tsigned:1;\n\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n")  # fmt: skip
    fields = tracing.parse_fields(text)
    assert (fields["commit"].offset, fields["commit"].size, fields["commit"].signed) == (8, 8, True)
    assert fields["data"].offset == 16


def test_a_run_is_entered_in_the_main_thread_only(tmp_path):
    """Off the main thread no signal handler (SIGTERM, the time limit) could be installed: refused, before
    anything is swept or created."""
    errors = []

    def enter() -> None:
        try:
            with cleanup.RunResources("pytest-thread", time_limit_s=5, state_dir=tmp_path):
                pass
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]
    assert not list(tmp_path.iterdir())


def test_a_stop_raised_in_a_finalizer_still_stops_the_run_at_once(tmp_path, monkeypatch):
    """Python loses an exception raised in a ``__del__`` (it prints "Exception ignored" and goes on): a SIGTERM
    whose handler ran there must still stop the run, in the run's next bytecodes, and print nothing."""
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the handler runs inside this finalizer
            sum(range(1000))

    went_on = []
    run = cleanup.RunResources("pytest-finalizer", state_dir=tmp_path, swap_dirs=(tmp_path,))
    with pytest.raises(cleanup.RunInterrupted, match="^stopped by SIGTERM$"), run:
        Finalized()  # collected here
        for _ in range(1000):  # 10 s, ended 50 ms in by the stop signalled again
            time.sleep(0.01)
        went_on.append(True)
    assert went_on == [] and ignored == []
    assert sys.unraisablehook == ignored.append  # restored
    assert not list(tmp_path.glob("*.json"))  # the run's record is gone


def test_a_stop_the_runs_code_swallowed_is_raised_when_the_run_leaves(tmp_path):
    run = cleanup.RunResources("pytest-swallowed", state_dir=tmp_path, swap_dirs=(tmp_path,))
    swallowed = contextlib.suppress(BaseException)  # the run's code swallows the stop
    with pytest.raises(cleanup.RunInterrupted, match="^stopped by SIGHUP$"), run, swallowed:
        signal.raise_signal(signal.SIGHUP)
        time.sleep(1)
    assert not list(tmp_path.glob("*.json"))


def test_preflight_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HostError, match="^the real twin must run as root") as err:
        preflight.check(64 * MIB, 64 * MIB, 64 * MIB)
    assert "\n" not in str(err.value)


# --- each resource, created and removed -----------------------------------------------------------------


@needs_host
def test_a_cgroup_limits_reads_and_goes_even_with_a_task_inside():
    group = cgroup.MemoryCgroup.create(cleanup.run_name("pytest-cg"), 64 * MIB, swap_bytes=32 * MIB)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert group.limit_bytes() == 64 * MIB
        assert group.memsw_limit_bytes() in (None, 96 * MIB)
        group.add_process(sleeper.pid)
        assert group.processes() == [sleeper.pid]
        sample = group.sample()
        assert sample.limit_bytes == 64 * MIB and sample.failcnt == 0 and sample.oom_kills in (0, None)
        assert {"rss", "swap", "pgfault", "pgmajfault", "unevictable"} <= set(sample.stat)
        group.remove()  # the sleeper still in it: moved to the root group, not killed
        assert not group.path.exists()
        assert sleeper.poll() is None
        root_procs = (group.path.parent / "cgroup.procs").read_text().split()
        assert str(sleeper.pid) in root_procs
    finally:
        sleeper.kill()
        sleeper.wait()
        cgroup.remove_group(group.path)
    with pytest.raises(HostError, match="too small"):
        cgroup.MemoryCgroup.create(cleanup.run_name("pytest-cg"), 4096, None)


@needs_host
def test_a_swap_file_goes_on_and_off_and_refuses_what_cannot_hold_it(tmp_path):
    before = swapfile.active_swaps()
    swap = swapfile.SwapFile.create(cleanup.run_name("pytest-swap"), 16 * MIB, priority=7)
    try:
        area = swap.area()
        assert area is not None and area.size_kib == 16 * 1024 - 4 and area.priority == 7  # less the header page
        assert swap.path.stat().st_mode & 0o777 == 0o600
    finally:
        swap.remove()
    assert swap.area() is None and not swap.path.exists()
    assert swapfile.active_swaps() == before or {a.path for a in before} <= {a.path for a in swapfile.active_swaps()}
    with pytest.raises(HostError, match="not enough disk for a .* swap file"):
        swapfile.check_room(tmp_path, 1 << 50)
    if swapfile.mounts.mount_of(Path("/dev/shm")).fstype == "tmpfs":
        with pytest.raises(HostError, match="is on tmpfs"):
            swapfile.check_room(Path("/dev/shm"), MIB)


@needs_host
def test_preflight_passes_here_and_names_what_does_not_fit():
    preflight.check(64 * MIB, 64 * MIB, 64 * MIB)
    with pytest.raises(HostError) as err:
        preflight.check(1 << 50, 1 << 50, 1 << 50)
    message = str(err.value)
    assert message.startswith("not enough free memory") and "not enough disk" in message and "\n" not in message


# --- the kernel, observed -------------------------------------------------------------------------------


@needs_host
def test_a_cgroup_limit_really_limits_and_the_rest_goes_to_swap():
    """160 MiB touched under a 64 MiB limit with a swap file: the group never holds more than the limit, and
    at least the difference is swapped out (pswpout is the machine's; it can only be higher)."""
    name = cleanup.run_name("pytest-limit")
    with contextlib.ExitStack() as undo:
        undo.callback(swapfile.SwapFile.create(name, 192 * MIB).remove)
        group = cgroup.MemoryCgroup.create(name, 64 * MIB, swap_bytes=192 * MIB)
        undo.callback(group.remove)
        proc, ready = tenant("touch", "160")
        undo.callback(stop, proc)
        group.add_process(ready["pid"])
        before = counters.read_vmstat()
        go_and_wait(proc)
        delta = counters.vmstat_delta(before, counters.read_vmstat())
        sample = group.sample()
        faults = counters.process_faults(ready["pid"])
        finish(proc)
    over = (160 - 64) * MIB // PAGE
    assert sample.max_usage_bytes <= 64 * MIB
    assert sample.failcnt > 0
    assert delta["pswpout"] >= over
    assert sample.stat["swap"] >= over * PAGE * 0.9  # the tenant's own swap, less what was swapped back in
    assert sample.memsw_max_usage_bytes is None or sample.memsw_max_usage_bytes > 64 * MIB
    assert sample.stat["pgfault"] >= 160 * MIB // PAGE and faults.minor >= 160 * MIB // PAGE


@needs_host
def test_the_cgroups_oom_killer_is_counted():
    """No swap for the group (memsw = limit): a tenant touching twice its limit is OOM-killed by the group's own
    OOM killer, and memory.oom_control counts it."""
    with contextlib.ExitStack() as undo:
        group = cgroup.MemoryCgroup.create(cleanup.run_name("pytest-oom"), 32 * MIB, swap_bytes=0)
        undo.callback(group.remove)
        if not group.has_swap_accounting:
            pytest.skip("no swap accounting (memsw) here: the tenant could swap instead of being killed")
        proc, ready = tenant("touch", "64")
        undo.callback(stop, proc)
        group.add_process(ready["pid"])
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        sample = group.sample()
    assert sample.oom_kills == 1
    assert counters.metrics(counters.Observation(memcg=sample))["oom_kills"] == 1


@needs_host
@needs_kvm
def test_a_private_instance_sees_kvm_notifier_events_and_leaves_the_top_level_alone():
    """MADV_DONTNEED of half a 64 MiB memslot reaches KVM as one kvm_unmap_hva_range of 8192 pages, seen in the
    run's own instance; the top-level buffer's settings are as they were, and the instance goes."""
    name = cleanup.run_name("pytest-trace")
    with tracefs_root() as root:
        top = top_level_state(root)
        with contextlib.ExitStack() as undo:
            inst = tracing.TraceInstance.create(root, name, buffer_kb=512)
            undo.callback(inst.remove)
            assert not inst.missing, inst.missing
            assert sorted(inst.enabled_events()) == sorted(inst.events)
            reader = tracing.TraceReader(inst)
            undo.callback(reader.close)
            reader.start()
            proc, ready = tenant("vm", "64", "32")
            undo.callback(stop, proc)
            reader.add_run_process(ready["pid"])
            reader.watch(ready["start"], ready["end"])
            go_and_wait(proc)
            counts = reader.stop()
            finish(proc)
        assert not inst.path.exists()
        assert top_level_state(root) == top
    unmap = "kvm:kvm_unmap_hva_range"
    assert counts.lost_events == 0 and counts.missed_subbuffers == 0
    assert counts.calls_inside(unmap, "run") == 1
    assert counts.pages_inside(unmap, "run") == 32 * MIB // PAGE
    assert counts.count(unmap, "run") >= 1  # also the harness's own ranges in the mm, outside the memslot
    assert counts.count("kvm:kvm_emulate_insn", "run") == 0  # a VM with no vCPU runs nothing


@needs_host
def test_a_reader_stopped_while_it_opens_its_buffers_leaves_none_open(monkeypatch):
    """A Ctrl-C that lands while the reader opens its per-CPU buffers (the twin's tests stop runs right there)
    must not leave one open: the instance could not be removed (EBUSY)."""
    opened, real_open = [], os.open

    def interrupted(path, flags, *args):
        if str(path).endswith("trace_pipe_raw") and opened:
            raise KeyboardInterrupt
        fd = real_open(path, flags, *args)
        if str(path).endswith("trace_pipe_raw"):
            opened.append(fd)
        return fd

    with tracefs_root() as root:
        inst = tracing.TraceInstance.create(root, cleanup.run_name("pytest-interrupted"), buffer_kb=64)
        try:
            if len(list((inst.path / "per_cpu").glob("cpu[0-9]*"))) < 2:
                pytest.skip("one CPU: one buffer, opened whole or not at all")
            reader = tracing.TraceReader(inst)
            monkeypatch.setattr(tracing.os, "open", interrupted)
            with pytest.raises(KeyboardInterrupt):
                reader.start()
            monkeypatch.undo()
            assert opened and not any(Path(f"/proc/self/fd/{fd}").exists() for fd in opened)
        finally:
            inst.remove()  # EBUSY (after a second of retries) if a buffer were still open
        assert not inst.path.exists()


@needs_host
@needs_kvm
def test_reclaim_under_the_limit_reaches_kvm_one_page_at_a_time_and_the_counts_fill_the_metrics():
    """A 96 MiB memslot touched under a 32 MiB limit: direct reclaim in the tenant's own thread swaps out
    at least 64 MiB, each page one kvm_unmap_hva_range of one page after kvm_age_hva looked at it, and
    mm_vmscan_lru_shrink_inactive's nr_reclaimed adds up to as much."""
    name = cleanup.run_name("pytest-reclaim")
    with contextlib.ExitStack() as undo:
        undo.callback(swapfile.SwapFile.create(name, 160 * MIB).remove)
        group = cgroup.MemoryCgroup.create(name, 32 * MIB, swap_bytes=160 * MIB)
        undo.callback(group.remove)
        root = undo.enter_context(tracefs_root())
        reader = tracing.TraceReader(tracing.TraceInstance.create(root, name, buffer_kb=2048))
        undo.callback(reader.instance.remove)
        undo.callback(reader.close)
        proc, ready = tenant("vm", "96", "0")
        undo.callback(stop, proc)
        group.add_process(ready["pid"])
        reader.add_run_process(ready["pid"])
        reader.watch(ready["start"], ready["end"])
        reader.start()
        before = counters.read_vmstat()
        go_and_wait(proc)
        obs = counters.Observation(vmstat=counters.vmstat_delta(before, counters.read_vmstat()),
                                   memcg=group.sample(), trace=reader.stop())  # fmt: skip
        finish(proc)
    t, over = obs.trace, (96 - 32) * MIB // PAGE
    unmap, age, shrink = "kvm:kvm_unmap_hva_range", "kvm:kvm_age_hva", "vmscan:mm_vmscan_lru_shrink_inactive"
    assert t.lost_events == 0
    assert t.calls_inside(unmap, "run") >= over * 0.9
    assert t.pages_inside(unmap, "run") == t.calls_inside(unmap, "run")  # one page per call
    assert t.pages_inside(age, tracing.reclaimers) >= t.calls_inside(unmap, "run")  # aged before unmapped
    assert t.sum(shrink, "nr_reclaimed", "run") >= over * 0.9
    assert t.sum(shrink, "nr_scanned", "run") >= t.sum(shrink, "nr_reclaimed", "run")
    found = counters.metrics(obs)
    assert found["invalidations"] >= t.calls_inside(unmap, "run")
    assert found["pages_invalidated"] == found["invalidations"]
    assert found["young_pages_aged"] == t.pages_inside(age, tracing.reclaimers)
    assert found["swap_outs"] >= found["pages_reclaimed"] * 0.9
    assert found["pgscan"] >= found["pages_reclaimed"] >= over * 0.9
    assert found["direct_reclaims"] > 0 and found["memcg_failcnt"] > 0
    assert found["memcg_max_usage_bytes"] <= 32 * MIB
    assert "tlb_flushes" not in found and "secondary_faults" not in found  # no KVM statistics read: absent


# The lifecycle of a whole run (normal, failed, Ctrl-C, SIGTERM, SIGKILL and the next run's sweep, a live run
# left alone) is tested on the real run itself: tests/test_real_run.py.
