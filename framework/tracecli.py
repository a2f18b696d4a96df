"""``mmnsim-trace``: record a real program's page accesses, convert traces between formats, describe one.

    mmnsim-trace record -o gzip.mmt.zst -- gzip -c input.txt
    mmnsim-trace convert gzip.mmt.zst gzip.valpin
    mmnsim-trace info gzip.mmt.zst

``record`` runs the program under ``valgrind --tool=lackey --trace-mem=yes``, reads the trace from a pipe
as it is produced (the text never touches the disk), drops instruction fetches and merges consecutive
accesses to one page (unless told not to), renumbers the program's virtual pages 0, 1, 2, ... in order of
first touch, and writes the compact ``mmt`` format, zstd-compressed when the name ends in ``.zst`` (gzip
for ``.gz``). Output files appear only when complete, and only where nothing or a regular file is: a
directory, a device node or a fifo is never replaced (one line, exit status 2); a full or read-only disk
is one line naming the file, exit status 1, and no temporary file is left.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from .entry import ArgumentParser, console_script
from .output import NotAFile, disk_error
from .traces import FORMATS, Collapser, Densifier, TraceError, TraceWriter, detect_format, read_stream, read_trace


def record(out: Path, command: list[str], keep_instructions: bool, collapse: bool) -> dict:
    if shutil.which("valgrind") is None:
        raise TraceError("record needs valgrind (apt-get install valgrind)")
    read_fd, write_fd = os.pipe()
    argv = ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-fd={write_fd}", *command]
    proc = subprocess.Popen(argv, pass_fds=[write_fd], stdout=subprocess.DEVNULL)
    os.close(write_fd)
    densify, merge = Densifier(), Collapser()
    writes_total = 0
    try:
        with os.fdopen(read_fd, "rb") as pipe, TraceWriter(out, detect_format(out, option="")) as writer:
            for chunk in read_stream(pipe, Path(f"lackey output of {command[0]}"), "lackey",
                                     keep_instructions=keep_instructions):  # fmt: skip
                pages, writes = densify(chunk.pages), chunk.writes
                if collapse:
                    pages, writes = merge(pages, writes)
                writer.write(pages, writes)
                writes_total += int(np.count_nonzero(writes))
            if proc.wait() != 0:
                raise TraceError(f"{shlex.join(command)} exited with status {proc.returncode}; no trace written")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"records": writer.records, "pages": densify.distinct, "writes": writes_total}


def convert(src: Path, dst: Path, src_fmt: str, dst_fmt: str, keep_instructions: bool, collapse: bool,
            dense: bool) -> dict:  # fmt: skip
    densify, merge = Densifier(), Collapser()
    with TraceWriter(dst, detect_format(dst, dst_fmt, "--to")) as writer:
        for chunk in read_trace(src, src_fmt, keep_instructions=keep_instructions, option="--from"):
            pages, writes = (densify(chunk.pages) if dense else chunk.pages), chunk.writes
            if collapse:
                pages, writes = merge(pages, writes)
            writer.write(pages, writes)
    return {"records": writer.records}


def info(path: Path, fmt: str) -> dict:
    records = writes = 0
    has_writes = True
    lo, hi = None, None
    seen = Densifier()
    for chunk in read_trace(path, fmt, option="--format"):
        records += chunk.pages.size
        has_writes = has_writes and chunk.writes is not None
        writes += int(np.count_nonzero(chunk.writes)) if chunk.writes is not None else 0
        lo = int(chunk.pages.min()) if lo is None else min(lo, int(chunk.pages.min()))
        hi = int(chunk.pages.max()) if hi is None else max(hi, int(chunk.pages.max()))
        seen(chunk.pages)
    return {"records": records, "distinct_pages": seen.distinct, "min_page": lo, "max_page": hi,
            "write_fraction": writes / records if has_writes else None}  # fmt: skip


@console_script("mmnsim-trace")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="mmnsim-trace", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record a program's page accesses with valgrind lackey")
    rec.add_argument("-o", "--output", type=Path, required=True, help="the trace to write (.mmt, .mmt.zst, ...)")
    rec.add_argument("--keep-instructions", action="store_true", help="record instruction fetches too")
    rec.add_argument("--no-collapse", action="store_true", help="keep consecutive accesses to one page")
    rec.add_argument("program", nargs=argparse.REMAINDER, help="-- then the command to run")
    conv = sub.add_parser("convert", help="convert a trace to another format")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    conv.add_argument("--from", dest="src_fmt", default="auto", choices=["auto", *FORMATS])
    conv.add_argument("--to", dest="dst_fmt", default="auto", choices=["auto", "mmt", "valpin", "oracle", "csv"])
    conv.add_argument("--keep-instructions", action="store_true")
    conv.add_argument("--collapse", action="store_true", help="merge consecutive accesses to one page")
    conv.add_argument("--dense", action="store_true", help="renumber pages 0, 1, 2, ... by first touch")
    inf = sub.add_parser("info", help="count a trace's records and pages")
    inf.add_argument("path", type=Path)
    inf.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    args = parser.parse_args(argv)
    try:
        if args.command == "record":
            program = args.program[1:] if args.program[:1] == ["--"] else args.program
            if not program:
                parser.error("record needs a command after --")
            result = record(args.output, program, args.keep_instructions, not args.no_collapse)
            print(f"{args.output}: {result['records']:,} accesses to {result['pages']:,} pages "
                  f"({result['writes']:,} writes) from: {shlex.join(program)}")  # fmt: skip
        elif args.command == "convert":
            result = convert(args.src, args.dst, args.src_fmt, args.dst_fmt, args.keep_instructions,
                             args.collapse, args.dense)  # fmt: skip
            print(f"{args.dst}: {result['records']:,} accesses")
        else:
            for key, value in info(args.path, args.format).items():
                print(f"{key}: {value}")
    except TraceError as exc:
        print(f"mmnsim-trace: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # the output: not a regular file (an input error), or a full or read-only disk
        print(f"mmnsim-trace: {disk_error(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, NotAFile) else 1)


if __name__ == "__main__":
    main()
