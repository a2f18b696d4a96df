"""Malformed input to ``mmnsim`` and ``mmnsim-trace``, one table row each.

Configs (``mmnsim`` overrides: unknown keys, plugins and policies, bad enum values, out-of-range sizes,
fractions and exponents, non-numbers, NUMA nodes and distance matrices, bad sweep syntax, a bad value
late in a multirun sweep) and trace files (missing, empty, truncated binary records, unknown formats,
bad CSV and lackey lines, truncated or corrupt gzip and zstd, ``convert`` failing part way) must each
end the command with a non-zero exit status and a one-line message naming the key, file, line or record
at fault (and what is accepted, where the tool says so), without a traceback, and leave nothing behind:
no ``outputs/`` or ``multirun/`` directory, no (partial or temporary) destination file.

Both commands run in-process (their ``main``), in an empty working directory holding only the case's
input files, so that anything the command wrote shows up as an extra entry there.
"""

import gzip
import sys

import numpy as np
import pytest
import zstandard
from hydra.core.global_hydra import GlobalHydra

from mmnsim import cli
from mmnsim.tracecli import main as trace_main
from mmnsim.traces import CHUNK, MMT_MAGIC

# Small settings, so that a case the checks wrongly let through still ends quickly (and then fails).
TINY = ("guest.memory_mib=32", "host.memory_mib=24", "host.swap_mib=64", "workload.accesses=50000",
        "engine.accesses_per_tick=16384")  # fmt: skip

VALPIN = np.arange(5000, dtype="<u8").tobytes()
ORACLE_RECORD = 24


def _corrupt_gzip_header() -> bytes:
    return b"\x1f\x8b" + b"not deflate at all" * 4  # gzip magic, then an unknown compression method


def _gzip_bad_crc() -> bytes:
    data = bytearray(gzip.compress(VALPIN))
    data[-8] ^= 0xFF  # the trailer's CRC32
    return bytes(data)


def _gzip_corrupt_data() -> bytes:
    data = bytearray(gzip.compress(np.random.default_rng(0).integers(0, 1 << 20, 5000).astype("<u8").tobytes()))
    data[20:60] = b"\xff" * 40  # inside the deflate stream
    return bytes(data)


def config(case_id, *overrides, message, multirun=False, files=None):
    """A row of the table: ``mmnsim`` with these overrides must fail with every string of ``message``."""
    keys = {o.lstrip("+~").split("=")[0] for o in overrides}
    base = [o for o in TINY if o.split("=")[0] not in keys]  # a case's own value wins over TINY's
    args = ["-m"] if multirun else []
    return pytest.param("mmnsim", [*args, *base, *overrides], files or {}, message, id=case_id)


def trace(case_id, *args, files, message):
    """A row of the table: ``mmnsim-trace ARGS`` over these input files must fail with ``message``."""
    return pytest.param("mmnsim-trace", list(args), files, message, id=case_id)


CASES = [
    # -- configs --
    config(
        "unknown-key",
        "engine.acesses_per_tick=5",
        message=("engine.acesses_per_tick: unknown key; accepted keys under engine: ", "accesses_per_tick"),
    ),
    config(
        "unknown-top-level-key",
        "+colour=blue",
        message=("colour: unknown key; accepted keys at top level: ", "host", "secondary", "workload"),
    ),
    config("unknown-secondary", "secondary=nvme", message=("secondary: unknown option 'nvme'; accepted: ", "kvm")),
    config(
        "unknown-policy",
        "policies=[swap,ballooning]",
        message=("policies: unknown option 'ballooning'; accepted: ", "eager_release", "swap"),
    ),
    config(
        "bad-secondary-mode",
        "secondary.mode=foo",
        message=("secondary.mode: invalid value 'foo'; accepted: pin, notifier, unpinned",),
    ),
    config(
        "bad-thp-mode",
        "host.thp=sometimes",
        message=("host.thp: invalid value 'sometimes'; accepted: always, madvise, never",),
    ),
    config("negative-host-memory", "host.memory_mib=-1", message=("host.memory_mib: must be > 0, got -1",)),
    config("negative-swap", "host.swap_mib=-64", message=("host.swap_mib: must be >= 0, got -64",)),
    config(
        "negative-lru-stats-flush",
        "kernel.lru_stats_flush_ms=-5",
        message=("kernel.lru_stats_flush_ms: must be >= 0 (0: exact statistics), got -5",),
    ),
    config("zero-guest-memory", "guest.memory_mib=0", message=("guest.memory_mib: must be > 0, got 0",)),
    config(
        "write-fraction-above-1",
        "workload.write_fraction=1.5",
        message=("workload.write_fraction: must be in [0, 1], got 1.5",),
    ),
    config("zipf-exponent-negative", "workload.exponent=-1", message=("workload.exponent: must be >= 0, got -1.0",)),
    config(
        "zipf-exponent-not-a-number",
        "workload.exponent=steep",
        message=("workload.exponent: invalid value 'steep'; expected float",),
    ),
    config("int-key-not-a-number", "guest.vcpus=four", message=("guest.vcpus: invalid value 'four'; expected int",)),
    config("seed-not-a-number", "seed=abc", message=("seed: expected a non-negative integer, got 'abc'",)),
    config(
        "vcpu-node-out-of-range",
        "host.numa_nodes=2",
        "guest.vcpu_nodes=[0,2]",
        message=("guest.vcpu_nodes: [0, 2] names a node outside 0..1 (host.numa_nodes=2)",),
    ),
    config(
        "process-node-out-of-range",
        "processes=[{name: hog, memory_mib: 4, node: 3, workload: {name: uniform}}]",
        message=("processes[0].node: 3 is outside 0..0 (host.numa_nodes=1)",),
    ),
    config(
        "distance-matrix-wrong-shape",
        "host.numa_nodes=2",
        "host.distance=[[10,20,20],[20,10,20]]",
        message=("host.distance: must be a 2x2 matrix (numa_nodes=2), got shape (2, 3)",),
    ),
    config(
        "distance-matrix-not-symmetric",
        "host.numa_nodes=2",
        "host.distance=[[10,20],[30,10]]",
        message=("host.distance: must be symmetric",),
    ),
    config(
        "distance-matrix-bad-diagonal",
        "host.numa_nodes=2",
        "host.distance=[[10,20],[20,12]]",
        message=("host.distance: diagonal must be 10",),
    ),
    config(
        "trace-format-name",
        "workload=trace",
        "workload.format=mmtt",
        message=("workload.format: must be auto or one of mmt, valpin, oracle, lackey, csv",),
    ),  # fmt: skip
    config("bad-sweep-syntax", "seed=0,,1", message=("Error parsing override 'seed=0,,1'",), multirun=True),
    config(
        "sweep-second-value-bad-option",
        "secondary.mode=pin,pinned",
        message=("secondary.mode: invalid value 'pinned'; accepted: pin, notifier, unpinned",),
        multirun=True,
    ),
    config(
        "sweep-second-value-out-of-range",
        "seed=0,1",
        "host.memory_mib=24,-3",
        message=("host.memory_mib: must be > 0, got -3",),
        multirun=True,
    ),
    # -- trace files --
    trace(
        "trace-missing-file",
        "info",
        "nope.valpin",
        files={},
        message=("nope.valpin: cannot open trace: No such file or directory",),
    ),
    trace(
        "trace-empty-file",
        "info",
        "empty.valpin",
        files={"empty.valpin": b""},
        message=("empty.valpin: the trace holds no accesses",),
    ),
    trace(
        "trace-truncated-valpin",
        "info",
        "cut.valpin",
        files={"cut.valpin": np.arange(10, dtype="<u8").tobytes()[:-3]},
        message=("cut.valpin: truncated: record 9 is cut short (5 of 8 bytes)", "valpin record (8 bytes)"),
    ),
    trace(
        "trace-truncated-oracle-record",
        "info",
        "cut.oracleGeneral",
        files={"cut.oracleGeneral": b"\0" * (3 * ORACLE_RECORD - 10)},
        message=("cut.oracleGeneral: truncated: record 2 is cut short (14 of 24 bytes)", "oracleGeneral record"),
    ),
    trace(
        "trace-truncated-mmt",
        "info",
        "cut.mmt",
        files={"cut.mmt": MMT_MAGIC + b"\1\0\0\0\2\0"},
        message=("cut.mmt: truncated: record 1 is cut short (2 of 4 bytes)",),
    ),
    trace(
        "trace-mmt-wrong-magic",
        "info",
        "zip.mmt",
        files={"zip.mmt": b"PK\x03\x04 a zip file"},
        message=("zip.mmt: not an mmt trace", "expected b'MMNSIMT1'"),
    ),
    trace(
        "trace-wrong-format-name",
        "info",
        "ok.valpin",
        "--format",
        "valpim",
        files={"ok.valpin": VALPIN},
        message=("argument --format: invalid choice: 'valpim'", "'valpin'", "'csv'"),
    ),
    trace(
        "trace-unknown-extension",
        "info",
        "pages.bin",
        files={"pages.bin": VALPIN},
        message=("pages.bin: cannot tell the trace format from the name", "mmt, valpin, oracle, lackey, csv"),
    ),
    trace(
        "csv-non-numeric-page",
        "info",
        "bad.csv",
        files={"bad.csv": b"page,write\n1,0\n2,1\nx7,0\n"},
        message=("bad.csv: line 4: 'x7,0' is not a page number (a non-negative integer)",),
    ),
    trace(
        "csv-missing-page-column",
        "info",
        "addr.csv",
        files={"addr.csv": b"addr,write\n4096,0\n8192,1\n"},
        message=("addr.csv: line 1: the header 'addr,write' has no 'page' column", "columns page and"),
    ),
    trace(
        "csv-bad-write-flag",
        "info",
        "flag.csv",
        files={"flag.csv": b"page,write\n1,0\n2,yes\n"},
        message=("flag.csv: line 3: '2,yes' is not a page number", "optional write flag (0 or 1)"),
    ),
    trace(
        "lackey-garbage-line",
        "info",
        "bad.lackey",
        files={"bad.lackey": b"==1== Lackey\n L 0400,8\n S 0408,8\nhello world\n"},
        message=("bad.lackey: line 4: not a lackey record: 'hello world'", "expected 'I  addr,size' or ' L|S|M"),
    ),
    trace(
        "gzip-truncated",
        "info",
        "cut.valpin.gz",
        files={"cut.valpin.gz": gzip.compress(VALPIN)[:-200]},
        message=("cut.valpin.gz: cannot read trace after record 0", "Compressed file ended"),
    ),
    trace(
        "gzip-corrupt-header",
        "info",
        "hdr.valpin.gz",
        files={"hdr.valpin.gz": _corrupt_gzip_header()},
        message=("hdr.valpin.gz: cannot read trace after record 0", "Unknown compression method"),
    ),
    trace(
        "gzip-bad-crc",
        "info",
        "crc.valpin.gz",
        files={"crc.valpin.gz": _gzip_bad_crc()},
        message=("crc.valpin.gz: cannot read trace after record 0", "CRC check failed"),
    ),
    trace(
        "zstd-truncated",
        "info",
        "cut.valpin.zst",
        files={"cut.valpin.zst": zstandard.ZstdCompressor().compress(VALPIN)[:-40]},
        message=("cut.valpin.zst: cannot read trace after record 0", "ends inside a frame"),
    ),
    trace(
        "gzip-corrupt-deflate-data",
        "info",
        "garbage.valpin.gz",
        files={"garbage.valpin.gz": _gzip_corrupt_data()},
        message=("garbage.valpin.gz: cannot read trace after record 0",),
    ),
    trace(
        "zstd-corrupt-frame-header",
        "info",
        "hdr.valpin.zst",
        files={"hdr.valpin.zst": b"\x28\xb5\x2f\xfd" + b"\xff" * 40},
        message=("hdr.valpin.zst: cannot read trace after record 0", "corrupt zstd data"),
    ),
    trace(
        "convert-into-a-missing-folder",
        "convert",
        "ok.valpin",
        "nodir/out.mmt",
        files={"ok.valpin": VALPIN},
        message=("nodir/out.mmt: cannot write: the folder nodir does not exist",),
    ),
    config(
        "trace-missing-file",
        "workload=trace",
        "secondary=none",
        "workload.path=nope.valpin",
        message=("workload: path: nope.valpin: no such trace file",),
    ),
    config(
        "trace-cut-short-in-a-sweep",
        "workload=trace",
        "secondary=none",
        "workload.path=ok.valpin,cut.valpin",
        files={"ok.valpin": VALPIN, "cut.valpin": VALPIN[:-3]},
        message=("workload: path: cut.valpin: 39997 bytes is not a whole number of valpin records",),
        multirun=True,
    ),
    config(
        "sweep-without-multirun",
        "seed=1,2",
        message=("seed=1,2: a sweep runs one job per value; add -m (--multirun)",),
    ),
    trace(
        "convert-truncated-source",
        "convert",
        "cut.valpin",
        "out.mmt",
        files={"cut.valpin": VALPIN[:-1]},
        message=("cut.valpin: truncated: record 4999 is cut short (7 of 8 bytes)",),
    ),
    trace(
        "convert-truncated-after-a-written-chunk",
        "convert",
        "long.valpin",
        "out.mmt.zst",
        files={"long.valpin": np.arange(CHUNK + 10, dtype="<u8").tobytes()[:-3]},
        message=(f"long.valpin: truncated: record {CHUNK + 9} is cut short (5 of 8 bytes)",),
    ),
    trace(
        "convert-page-too-large-for-mmt",
        "convert",
        "huge.valpin",
        "out.mmt",
        files={"huge.valpin": np.array([1, 2, 1 << 40], dtype="<u8").tobytes()},
        message=("out.mmt: page 1099511627776 exceeds the mmt format's 2147483647",),
    ),
    trace(
        "convert-to-unwritable-format",
        "convert",
        "ok.valpin",
        "out.lackey",
        files={"ok.valpin": VALPIN},
        message=("out.lackey: cannot write format 'lackey'; accepted: mmt, valpin, oracle, csv",),
    ),
]


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("tool, args, files, message", CASES)
def test_bad_input_fails_with_a_clear_message_and_writes_nothing(tool, args, files, message, tmp_path, monkeypatch,
                                                                 capsys):  # fmt: skip
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        if tool == "mmnsim":
            monkeypatch.setattr(sys, "argv", ["mmnsim", *args])
            cli.main()
        else:
            trace_main(args)
    err = capsys.readouterr().err
    assert exit_.value.code not in (0, None), err
    assert "Traceback" not in err, err
    for part in message:
        assert part in err, err
    lines = err.strip().splitlines()
    assert all(part in lines[-1] for part in message), f"the message is not on one line: {err}"
    argparse_error = lines[-1].startswith(f"{tool} ") and ": error: " in lines[-1]  # after its usage lines
    assert len(lines) == 1 or argparse_error, f"more than the one line: {err}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files), "the command left files behind"


def test_a_trace_page_beyond_the_guest_stops_the_run_with_the_record_and_no_results(tmp_path, monkeypatch, capsys):
    """Found only when the replay reaches it (the checks before the run read the first records alone): the
    job's folder holds Hydra's log, but no result file."""
    (tmp_path / "big.valpin").write_bytes(np.array([1, 2, 3, 40_000, 5], dtype="<u8").tobytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mmnsim", *TINY, "workload=trace", "secondary=none", "workload.path=big.valpin"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert "big.valpin: record 3: trace page 40000 maps to page 40000, outside the 8192 pages of the mm" in err
    assert not list(tmp_path.rglob("*.parquet"))
