"""Trace formats, replay, the shipped trace, and the ``mmnsim-trace`` command."""

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from conftest import run, simulation
from mmnsim import data_path
from mmnsim.tracecli import main as trace_main
from mmnsim.traces import MMT_MAGIC, TraceError, TraceWriter, read_trace

SHIPPED = Path(data_path("traces/sqlite3.mmt.zst"))
LACKEY = """==123== Lackey, an example Valgrind tool
I  04022cfc,3
 L 1ffefffd60,8
 S 04a2b000,8
 S 04a2b008,8
 M 04a2cff8,4
I  04022d00,2
 L 1ffefffd68,8
==123==
"""


def replay(path: Path, fmt: str = "auto", **kw) -> tuple[np.ndarray, np.ndarray | None]:
    chunks = list(read_trace(path, fmt, **kw))
    writes = None if chunks[0].writes is None else np.concatenate([c.writes for c in chunks])
    return np.concatenate([c.pages for c in chunks]).astype(np.int64), writes


@pytest.mark.parametrize("fmt, suffix", [("mmt", ".mmt"), ("mmt", ".mmt.zst"), ("valpin", ".valpin"),
                                         ("oracle", ".oracleGeneral"), ("csv", ".csv")])  # fmt: skip
def test_every_writable_format_reads_back_what_was_written(tmp_path, fmt, suffix):
    rng = np.random.default_rng(0)
    pages, writes = rng.integers(0, 5000, 30_000), rng.random(30_000) < 0.3
    path = tmp_path / f"t{suffix}"
    with TraceWriter(path, fmt) as w:
        w.write(pages[:10_000], writes[:10_000])
        w.write(pages[10_000:], writes[10_000:])
    got_pages, got_writes = replay(path)
    assert np.array_equal(got_pages, pages)
    small_pages, small_writes = replay(path, chunk=4096)  # chunk edges inside the file (mapped if uncompressed)
    assert np.array_equal(small_pages, pages)
    if fmt in ("mmt", "csv"):
        assert np.array_equal(got_writes, writes) and np.array_equal(small_writes, writes)
    else:
        assert got_writes is None  # valpin and oracleGeneral carry no write flags


def test_compressed_files_are_read_directly_and_in_bounded_chunks(tmp_path):
    pages = np.arange(100_000) % 777
    plain = tmp_path / "t.valpin"
    pages.astype("<u8").tofile(plain)
    (tmp_path / "t.valpin.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "t.valpin.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    for name in ("t.valpin", "t.valpin.gz", "t.valpin.zst"):
        chunks = list(read_trace(tmp_path / name, chunk=4096))
        assert max(c.pages.size for c in chunks) == 4096 and len(chunks) == 25
        assert np.array_equal(np.concatenate([c.pages for c in chunks]), pages)


def test_lackey_text_with_and_without_instruction_fetches(tmp_path):
    path = tmp_path / "t.lackey"
    path.write_text(LACKEY)
    pages, writes = replay(path)
    assert pages.tolist() == [0x1FFEFFF, 0x4A2B, 0x4A2B, 0x4A2C, 0x1FFEFFF]
    assert writes.tolist() == [False, True, True, True, False]  # S and M write
    pages, _ = replay(path, keep_instructions=True)
    assert pages.tolist()[:2] == [0x4022, 0x1FFEFFF] and len(pages) == 7


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.valpin", b"", "the trace holds no accesses"),
        ("cut.valpin", np.arange(10, dtype="<u8").tobytes()[:-3], "truncated: record 9 is cut short (5 of 8 bytes)"),
        ("cut.oracleGeneral", b"\0" * 50, "truncated: record 2 is cut short (2 of 24 bytes)"),
        ("cut.mmt", MMT_MAGIC + b"\1\0\0", "truncated: record 0 is cut short (3 of 4 bytes)"),
        ("wrong.mmt", b"PK\x03\x04 a zip file", "not an mmt trace"),
        ("bad.csv", b"page,write\n1,0\n2,1\nx7,0\n", "line 4: 'x7,0' is not a page number"),
        ("bad2.csv", b"3\n-4\n", "line 2: '-4' is not a page number"),
        ("bad.lackey", b" L 0400,8\n X 1234,8\n", "line 2: not a lackey record: ' X 1234,8'"),
        (
            "cut.valpin.zst",
            zstandard.ZstdCompressor().compress(np.arange(9000, dtype="<u8").tobytes())[:-40],
            "ends inside a frame",
        ),
        ("noformat.bin", b"\0" * 8, "cannot tell the trace format from the name"),
    ],
)
def test_bad_trace_files_are_named_with_the_record_or_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TraceError) as err:
        list(read_trace(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_page_beyond_the_guest_names_the_record_and_stops_the_run(tmp_path):
    path = tmp_path / "t.valpin"
    np.array([1, 2, 3, 40_000, 5], dtype="<u8").tofile(path)
    with pytest.raises(TraceError, match=r"record 3: trace page 40000 maps to page 40000, outside the 16384 pages"):
        run("workload=trace", f"workload.path={path}")


def test_the_mmnsim_trace_command_reports_bad_input_and_leaves_nothing_half_written(tmp_path, capsys):
    src = tmp_path / "cut.valpin"
    src.write_bytes(np.arange(5000, dtype="<u8").tobytes()[:-1])
    dst = tmp_path / "out.mmt"
    with pytest.raises(SystemExit) as exit_:
        trace_main(["convert", str(src), str(dst)])
    assert exit_.value.code == 2
    assert "truncated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [src]


def test_replay_maps_the_trace_into_the_guest_and_loops(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("page,write\n" + "".join(f"{1000 + p},{p % 2}\n" for p in range(100)))
    sim = simulation("workload=trace", f"workload.path={path}", "workload.offset=1000", "workload.loop=true",
                     "workload.accesses=250", "secondary=none")  # fmt: skip
    m = sim.run()
    assert m["accesses"] == 250 and m["writes"] == 125
    assert np.count_nonzero(sim.mms[0].pte >= 0) == 100
    fit = simulation("workload=trace", f"workload.path={path}", "workload.fit=true", "guest.memory_mib=1",
                     "secondary=none")  # fmt: skip
    fit.run()
    resident = np.flatnonzero(fit.mms[0].pte >= 0)
    assert resident[0] == 0 and resident[-1] == 255 - 2  # 100 trace pages stretched over 256


def test_several_traces_as_a_guest_and_a_process(tmp_path):
    a, b = tmp_path / "a.valpin", tmp_path / "b.valpin"
    np.arange(3000, dtype="<u8").tofile(a)
    (np.arange(2000, dtype="<u8") % 300).tofile(b)
    sim, m = run("workload=trace", f"workload.path={a}",
                 f"processes=[{{name: db, memory_mib: 8, node: 0, workload: {{name: trace, path: '{b}'}}, "
                 "secondary: {name: kvm, mode: pin}}]")  # fmt: skip
    assert m["accesses"] == 5000
    assert sim.tenants[1].secondary.pin_mode and sim.tenants[1].secondary.mapped_pages() == 300
    assert m["invariant_violations"] == 0


@pytest.mark.parametrize("mib", [1, 2, 4])
def test_exact_clock_on_the_shipped_trace_matches_libcachesim(tmp_path, mib):
    lcs = pytest.importorskip("libcachesim")
    valpin = tmp_path / "sqlite3.valpin"
    trace_main(["convert", str(SHIPPED), str(valpin)])
    reader = lcs.TraceReader(str(valpin), lcs.TraceType.VALPIN_TRACE, lcs.ReaderInitParam(ignore_obj_size=True))
    miss_ratio, _ = lcs.Clock(cache_size=mib * 256).process_trace(reader)
    sim, m = run("workload=trace", "secondary=none", "policies.swap.mode=clock", f"host.memory_mib={mib}",
                 "guest.memory_mib=8", small=False)  # fmt: skip
    assert m["accesses"] == 22_186_631
    assert m["minor_faults"] + m["major_faults"] == round(miss_ratio * m["accesses"])
    assert m["invariant_violations"] == 0


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_record_a_real_program(tmp_path):
    out = tmp_path / "ls.mmt.zst"
    exe = Path(sys.executable).with_name("mmnsim-trace")
    done = subprocess.run([str(exe), "record", "-o", str(out), "--", "ls", "/"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pages, writes = replay(out)
    assert pages.size > 10_000 and 50 < pages.max() + 1 < 10_000 and writes.any()
    assert np.array_equal(np.unique(pages), np.arange(pages.max() + 1))  # renumbered densely by first touch
    assert (np.diff(pages) != 0).all()  # consecutive accesses to one page merged
