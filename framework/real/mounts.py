"""The machine's mounts, read from /proc/self/mountinfo (Documentation/filesystems/proc.rst, 3.5): where
tracefs and the memory cgroup are, and which filesystem holds a path (a swap file cannot live on tmpfs)."""

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Mount:
    mountpoint: Path
    fstype: str
    source: str
    super_options: frozenset[str]


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[Mount]:
    """Every mount of this process's mount namespace, in mount order."""
    out = []
    for line in MOUNTINFO.read_text().splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        out.append(Mount(Path(unescape(fields[4])), rest[0], unescape(rest[1]), frozenset(rest[2].split(","))))
    return out


def of_type(fstype: str) -> list[Mount]:
    return [m for m in mounts() if m.fstype == fstype]


def mount_of(path: Path) -> Mount:
    """The mount that holds ``path`` (its nearest existing ancestor): the longest mountpoint prefix, the
    latest mount winning where several are stacked."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    path = path.resolve()
    best: Mount | None = None
    for m in mounts():
        holds = path == m.mountpoint or m.mountpoint in path.parents
        if holds and (best is None or len(m.mountpoint.parts) >= len(best.mountpoint.parts)):
            best = m
    assert best is not None, "/ is always mounted"
    return best
