"""Page-access traces: reading and writing them in chunks, whatever their size.

Formats (``FORMATS``), each optionally gzip- or zstd-compressed (detected from the file's first bytes):

* ``mmt``: mmnsim's compact trace: the 8-byte magic ``MMNSIMT1``, then one little-endian uint32 per
  access, the page number in bits 0-30 and the write flag in bit 31.
* ``valpin``: raw little-endian uint64 page numbers (libCacheSim's "valpin" layout); no write flags.
* ``oracle``: libCacheSim's oracleGeneral records, 24 bytes each: uint32 timestamp, uint64 object id
  (the page), uint32 size, int64 next access; no write flags.
* ``lackey``: the text ``valgrind --tool=lackey --trace-mem=yes`` prints: ``I  addr,size`` (instruction
  fetch), `` L``/`` S``/`` M`` (load, store, modify) ``addr,size``; the page is ``addr >> 12`` (an access
  that straddles two pages counts for the first). Valgrind's own ``==pid==`` lines are skipped.
* ``csv``: a ``page`` column and an optional ``write`` column (0/1), with a header row; or, without a
  header, the page in the first column and the write flag in the optional second.

Every reader yields ``TraceChunk``s of at most ``chunk`` records, so a trace larger than memory replays
in bounded memory. A malformed file raises ``TraceError`` naming the file and the record or line.
"""

import contextlib
import csv
import gzip
import io
import mmap
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numba import njit, types
from numba.typed import Dict

MMT_MAGIC = b"MMNSIMT1"
MMT_WRITE = np.uint32(1 << 31)
MMT_MAX_PAGE = (1 << 31) - 1
MAX_PAGE = (1 << 64) - 1  # a page number is a uint64 in every format
ORACLE = np.dtype([("time", "<u4"), ("page", "<u8"), ("size", "<u4"), ("next", "<i8")])
FORMATS = ("mmt", "valpin", "oracle", "lackey", "csv")
EXTENSIONS = {".mmt": "mmt", ".valpin": "valpin", ".oracleGeneral": "oracle", ".oracle": "oracle",
              ".lackey": "lackey", ".csv": "csv"}  # fmt: skip
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


class TraceError(ValueError):
    """A trace file is malformed; the message names the file and the record or line."""


@dataclass
class TraceChunk:
    pages: np.ndarray  # page numbers as the trace has them (an unsigned integer array)
    writes: np.ndarray | None  # bool per access, or None when the format has no write flags
    first: int  # index of the chunk's first record in the trace


def detect_format(path: Path, fmt: str = "auto", option: str = "workload.format=") -> str:
    """The trace format named by ``fmt``, or guessed from the file name (before .gz/.zst); ``option`` is how
    the user names the format, for the message when the name does not tell it ("": only the name can)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise TraceError(f"{path}: unknown trace format {fmt!r}; accepted: auto, {', '.join(FORMATS)}")
        return fmt
    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    fmt = EXTENSIONS.get(Path(name).suffix)
    if fmt is None:
        names = f"name the file *{'/*'.join(EXTENSIONS)}, optionally .gz or .zst"
        how = f"give it as {option} one of {', '.join(FORMATS)} ({names})" if option else names
        raise TraceError(f"{path}: cannot tell the trace format from the name; {how}")
    return fmt


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed if it is gzip or zstd."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - handed to the caller
    except OSError as exc:
        raise TraceError(f"{path}: cannot open trace: {exc.strerror}") from None
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw)
    if head == ZSTD_MAGIC:
        return _ZstdReader(raw)
    return raw


class _ZstdReader(io.RawIOBase):
    """Decompresses a zstd stream (one frame or several) and, unlike zstandard's own stream reader,
    raises EOFError when the file ends inside a frame: a cut-off trace must not pass for a short one."""

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            data = self._raw.read(1 << 20)
            if not data:
                if self._in_frame:
                    raise EOFError("the zstd stream ends inside a frame (the file is cut short)")
                break
            while data:
                self._in_frame = True
                try:
                    self._buf += self._dobj.decompress(data)
                except self._zstd.ZstdError as exc:  # a corrupt frame
                    raise OSError(f"corrupt zstd data: {exc}") from None
                data = self._dobj.unused_data if self._dobj.eof else b""
                if self._dobj.eof:
                    self._in_frame = False
                    self._dobj = self._zstd.ZstdDecompressor().decompressobj()
        out, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def read_trace(path: str | os.PathLike, fmt: str = "auto", chunk: int = CHUNK,
               keep_instructions: bool = False, option: str = "workload.format=") -> Iterator[TraceChunk]:  # fmt: skip
    """The trace's records in chunks. Raises TraceError on a malformed or empty file."""
    path = Path(path)
    fmt = detect_format(path, fmt, option)
    with open_binary(path) as f:
        yield from read_stream(f, path, fmt, chunk, keep_instructions)


def probe(path: str | os.PathLike, fmt: str = "auto") -> str:
    """Check, cheaply, that ``path`` is a readable trace: it exists, its format is known, an uncompressed
    fixed-size file holds whole records and its first records parse. Returns the format; raises TraceError.
    A fault further into the file is found when the replay reaches it."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    fmt = detect_format(path, fmt)
    sizes = {"valpin": 8, "oracle": ORACLE.itemsize}
    with open_binary(path) as f:
        if fmt in sizes and not isinstance(f, gzip.GzipFile | _ZstdReader):
            size = path.stat().st_size
            if size % sizes[fmt]:
                raise TraceError(f"{path}: {size} bytes is not a whole number of {fmt} records "
                                 f"({sizes[fmt]} bytes each): the file is cut short")  # fmt: skip
        next(read_stream(f, path, fmt, chunk=4096), None)
    return fmt


def read_stream(f: BinaryIO, path: Path, fmt: str, chunk: int = CHUNK,
                keep_instructions: bool = False) -> Iterator[TraceChunk]:  # fmt: skip
    """As ``read_trace``, from an open binary stream (a pipe, say); ``path`` names it in errors."""
    records = 0
    readers = {
        "mmt": lambda: _read_mmt(f, path, chunk),
        "valpin": lambda: _read_fixed(f, path, chunk, np.dtype("<u8"), "valpin record (8 bytes)"),
        "oracle": lambda: _read_fixed(f, path, chunk, ORACLE, "oracleGeneral record (24 bytes)"),
        "lackey": lambda: _read_lackey(f, path, chunk, keep_instructions),
        "csv": lambda: _read_csv(f, path, chunk),
    }
    try:
        for c in readers[fmt]():
            records += c.pages.size
            yield c
    except (OSError, EOFError, zlib.error) as exc:  # a corrupt or cut-off compressed stream
        raise TraceError(f"{path}: cannot read trace after record {records}: {exc}") from None
    if records == 0:
        raise TraceError(f"{path}: the trace holds no accesses")


def _read_exact(f: BinaryIO, n: int) -> bytes:
    buf = bytearray(n)
    return bytes(buf[: _read_into(f, memoryview(buf))])


def _read_into(f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``f``, reading on after short reads (pipes, decompressors); return bytes read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_fixed(f: BinaryIO, path: Path, chunk: int, dtype: np.dtype, what: str) -> Iterator[TraceChunk]:
    mapped = _map_file(f)
    first = 0
    while True:
        if mapped is not None:  # a view of the page cache: nothing is copied
            start = f.tell() + first * dtype.itemsize
            got = min(chunk * dtype.itemsize, len(mapped) - start)
            buf = np.frombuffer(mapped, dtype=np.uint8, count=got, offset=start) if got else None
        else:
            buf = np.empty(chunk * dtype.itemsize, dtype=np.uint8)  # read straight into the array
            got = _read_into(f, memoryview(buf))
        if not got:
            return
        if got % dtype.itemsize:
            raise TraceError(
                f"{path}: truncated: record {first + got // dtype.itemsize} is cut short "
                f"({got % dtype.itemsize} of {dtype.itemsize} bytes); is this really a {what} file?"
            )
        data = buf[:got].view(dtype)
        yield TraceChunk(data["page"].copy() if dtype.names else data, None, first)
        first += data.size


def _map_file(f: BinaryIO) -> mmap.mmap | None:
    """The whole of a plain file, memory-mapped read-only (None for a compressed stream, a pipe or an
    empty file). Chunks are views of it; it stays mapped while any of them is alive."""
    if not isinstance(f, io.BufferedReader) or not f.seekable():
        return None
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return None


def _read_mmt(f: BinaryIO, path: Path, chunk: int) -> Iterator[TraceChunk]:
    magic = _read_exact(f, len(MMT_MAGIC))
    if magic != MMT_MAGIC:
        raise TraceError(f"{path}: not an mmt trace (its first bytes are {magic!r}, expected {MMT_MAGIC!r})")
    for c in _read_fixed(f, path, chunk, np.dtype("<u4"), "mmt record (4 bytes)"):
        yield TraceChunk(c.pages & ~MMT_WRITE, c.pages >= MMT_WRITE, c.first)


def _read_lackey(f: BinaryIO, path: Path, chunk: int, keep_instructions: bool) -> Iterator[TraceChunk]:
    first = 0
    line = 1
    rest = b""
    pages = np.empty(chunk, dtype=np.uint64)
    writes = np.empty(chunk, dtype=np.bool_)
    while True:
        block = f.read(4 << 20)
        buf = np.frombuffer(rest + block, dtype=np.uint8)
        if not block:
            if not buf.size:
                return
            buf = np.frombuffer(rest + b"\n", dtype=np.uint8)  # a last line without a newline
        at = 0
        while at < buf.size:
            count, used, lines, bad = _parse_lackey(buf[at:], pages, writes, keep_instructions)
            if bad >= 0:
                text = bytes(buf[at + bad : at + bad + 60]).split(b"\n")[0].decode(errors="replace")
                raise TraceError(
                    f"{path}: line {line + lines}: not a lackey record: {text!r} "
                    "(expected 'I  addr,size' or ' L|S|M addr,size')"
                )
            if count:
                yield TraceChunk(pages[:count].copy(), writes[:count].copy(), first)
                first += count
            line += lines
            if used == 0:
                break
            at += used
        rest = bytes(buf[at:]) if block else b""
        if not block:
            return


@njit(cache=True)
def _parse_lackey(buf, pages, writes, keep_instructions):
    """Parse whole lines of ``buf`` until ``pages`` is full. Returns (records, bytes used, lines,
    offset of a malformed line or -1)."""
    n = buf.size
    i = 0
    count = 0
    lines = 0
    while i < n and count < pages.size:
        end = i
        while end < n and buf[end] != 10:
            end += 1
        if end == n:
            break  # an incomplete line: wait for more bytes
        start = i
        i = end + 1
        lines += 1
        if end == start or buf[start] == 61:  # empty, or '==pid== valgrind message'
            continue
        if buf[start] == 73:  # 'I'
            kind = 73
            j = start + 1
        elif buf[start] == 32 and start + 1 < end and buf[start + 1] in (76, 83, 77):  # ' L', ' S', ' M'
            kind = buf[start + 1]
            j = start + 2
        else:
            return count, start, lines - 1, start
        while j < end and buf[j] == 32:
            j += 1
        addr = np.uint64(0)
        digits = 0
        while j < end and buf[j] != 44:  # ','
            c = buf[j]
            if 48 <= c <= 57:
                v = c - 48
            elif 97 <= c <= 102:
                v = c - 87
            elif 65 <= c <= 70:
                v = c - 55
            else:
                return count, start, lines - 1, start
            addr = (addr << np.uint64(4)) | np.uint64(v)
            digits += 1
            j += 1
        if digits == 0 or digits > 16 or j == end:  # more than 16 hex digits: past 2^64, no address
            return count, start, lines - 1, start
        if kind == 73 and not keep_instructions:
            continue
        pages[count] = addr >> np.uint64(12)
        writes[count] = kind == 83 or kind == 77
        count += 1
    return count, i, lines, -1


def _read_csv(f: BinaryIO, path: Path, chunk: int) -> Iterator[TraceChunk]:
    text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
    rows = csv.reader(text)
    try:
        yield from _csv_chunks(rows, path, chunk)
    except csv.Error as exc:  # a field past csv.field_size_limit(), a NUL byte
        raise TraceError(f"{path}: line {rows.line_num}: {exc}; a CSV trace holds a page number and an optional "
                         "write flag per line") from None  # fmt: skip


def _csv_chunks(rows, path: Path, chunk: int) -> Iterator[TraceChunk]:
    first_row = next(rows, None)
    if first_row is None:
        return
    header = [c.strip().lower() for c in first_row]
    line = 1
    if "page" in header:
        page_col = header.index("page")
        write_col = header.index("write") if "write" in header else None
        pending: list[list[str]] = []
        line = 2
    elif not first_row[0].strip().isdigit() and any(c.isalpha() for c in first_row[0]):
        raise TraceError(
            f"{path}: line 1: the header {','.join(first_row)!r} has no 'page' column; a CSV trace has a header "
            "with columns page and (optionally) write, or no header and the page number first"
        )
    else:
        page_col, write_col = 0, (1 if len(first_row) > 1 else None)
        pending = [first_row]
    first = 0
    while True:
        pending.extend(row for _, row in zip(range(chunk - len(pending)), rows, strict=False))
        if not pending:
            return
        pages = np.empty(len(pending), dtype=np.uint64)
        writes = np.zeros(len(pending), dtype=np.bool_) if write_col is not None else None
        for k, row in enumerate(pending):
            try:
                value = int(row[page_col])
                if value > MAX_PAGE:
                    raise TraceError(f"{path}: line {line + k}: page {_shorten(str(value))} is past the largest page "
                                     "number a trace holds, 2^64-1")  # fmt: skip
                if value < 0:
                    raise ValueError
                pages[k] = value
                if writes is not None:
                    flag = row[write_col].strip().lower() if write_col < len(row) else "0"
                    if flag not in ("0", "1", "true", "false", ""):
                        raise ValueError
                    writes[k] = flag in ("1", "true")
            except TraceError:
                raise
            except (ValueError, IndexError):
                raise TraceError(
                    f"{path}: line {line + k}: {_shorten(','.join(row))!r} is not a page number (a non-negative "
                    "integer) with an optional write flag (0 or 1)"
                ) from None
        yield TraceChunk(pages, writes, first)
        first += len(pending)
        line += len(pending)
        pending = []


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


# -- writing --


class TraceWriter:
    """Writes a trace in chunks to a temporary file beside ``path``, renamed into place only by ``close()``.

    A name ending in ``.zst`` is zstd-compressed and one ending in ``.gz`` gzip-compressed (``zstd=True``
    forces zstd), so that readers, which detect the compression from the bytes, read what the name says.
    ``path`` must name a regular file or nothing (``output.output_path``: a symbolic link writes its target;
    a directory, a device node or a fifo raises ``NotAFile``, never replaced). Used as a context manager,
    an exception discards the temporary file; so does a failed ``close()`` (a full disk): no half-written
    trace is ever left, under the final name or the temporary one.
    """

    def __init__(self, path: str | os.PathLike, fmt: str, zstd: bool | None = None):
        from .output import output_path  # output imports the metrics, which import the notifier, which imports this

        self.fmt = fmt
        if fmt not in ("mmt", "valpin", "oracle", "csv"):
            raise TraceError(f"{path}: cannot write format {fmt!r}; accepted: mmt, valpin, oracle, csv")
        self.path = output_path(path)
        if not self.path.parent.is_dir():
            raise TraceError(f"{self.path}: cannot write: the folder {self.path.parent} does not exist")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self._raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        self._out: BinaryIO = self._raw
        self.records = 0
        try:
            if self.path.suffix == ".zst" if zstd is None else zstd:
                import zstandard

                self._out = zstandard.ZstdCompressor(level=19).stream_writer(self._raw)
            elif self.path.suffix == ".gz":
                self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=6, mtime=0)
            if fmt == "mmt":
                self._out.write(MMT_MAGIC)
            elif fmt == "csv":
                self._out.write(b"page,write\n")
        except OSError as exc:
            self.abort()
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        except BaseException:
            self.abort()
            raise

    def write(self, pages: np.ndarray, writes: np.ndarray | None) -> None:
        try:
            self._write(pages, writes)
        except OSError as exc:  # a full disk: name the file the user asked for, not its temporary name
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def _write(self, pages: np.ndarray, writes: np.ndarray | None) -> None:
        pages = np.asarray(pages, dtype=np.uint64)
        w = np.zeros(pages.size, dtype=bool) if writes is None else np.asarray(writes, dtype=bool)
        if self.fmt == "mmt":
            if pages.size and int(pages.max()) > MMT_MAX_PAGE:
                raise TraceError(f"{self.path}: page {int(pages.max())} exceeds the mmt format's {MMT_MAX_PAGE}")
            self._out.write((pages.astype(np.uint32) | np.where(w, MMT_WRITE, 0).astype(np.uint32)).tobytes())
        elif self.fmt == "valpin":
            self._out.write(pages.astype("<u8").tobytes())
        elif self.fmt == "oracle":
            rec = np.zeros(pages.size, dtype=ORACLE)
            rec["time"] = np.arange(self.records, self.records + pages.size) & 0xFFFFFFFF
            rec["page"], rec["size"], rec["next"] = pages, 1, -1
            self._out.write(rec.tobytes())
        else:
            self._out.write("".join(f"{p},{int(x)}\n" for p, x in zip(pages, w, strict=True)).encode())
        self.records += pages.size

    def close(self) -> None:
        """Finish the file and rename it into place; on an error (a full disk at the last flush, the path
        taken by a directory meanwhile) remove the temporary file and raise."""
        from .output import NotAFile, output_path

        try:
            self._out.close()
            if not self._raw.closed:
                self._raw.close()
            output_path(self.path)  # still nothing, or a regular file, there
            os.replace(self.tmp, self.path)
        except NotAFile:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the temporary file (idempotent)."""
        with contextlib.suppress(OSError, ValueError):  # closing a stream whose disk is full fails again
            self._out.close()
        with contextlib.suppress(OSError):
            self._raw.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# -- transforming --


class Densifier:
    """Renumbers pages 0, 1, 2, ... in order of first appearance (sparse virtual pages to a dense range)."""

    def __init__(self) -> None:
        self.table = Dict.empty(key_type=types.uint64, value_type=types.int64)

    def __call__(self, pages: np.ndarray) -> np.ndarray:
        out = np.empty(pages.size, dtype=np.uint64)
        _densify(self.table, pages.astype(np.uint64), out)
        return out

    @property
    def distinct(self) -> int:
        return len(self.table)


@njit(cache=True)
def _densify(table, pages, out):
    for i in range(pages.size):
        p = pages[i]
        d = table.get(p, -1)
        if d < 0:
            d = len(table)
            table[p] = d
        out[i] = d


class Collapser:
    """Merges consecutive accesses to the same page into one (a write if any of them wrote)."""

    def __init__(self) -> None:
        self.last = np.uint64(2**64 - 1)

    def __call__(self, pages: np.ndarray, writes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if pages.size == 0:
            return pages, writes
        starts = np.empty(pages.size, dtype=bool)
        starts[0] = pages[0] != self.last
        np.not_equal(pages[1:], pages[:-1], out=starts[1:])
        self.last = pages[-1]
        keep = np.flatnonzero(starts)
        if writes is None:
            return pages[keep], None
        # A run continuing the previous chunk's last page is dropped; its writes are lost only there.
        group = np.cumsum(starts) - 1
        any_write = np.zeros(keep.size, dtype=bool)
        valid = group >= 0
        np.logical_or.at(any_write, group[valid], writes[valid])
        return pages[keep], any_write
