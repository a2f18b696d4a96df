"""The memory guard: what a run will allocate, estimated from its settings before anything is allocated,
against what the machine has (``MemAvailable``) or ``engine.max_memory_gib``.

The estimate counts the arrays that grow with the scenario, at the bytes per element their constructors
allocate; ``tests/test_memory.py`` holds it against the bytes a built simulation actually allocated.
Python's and numba's own memory (about 200 MB once the kernels are loaded) is not counted.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:
    from .settings import Settings

FRAME_BYTES = 11  # frames.py new_frame_table: key int32, token uint32, pin uint16, ref uint8 per frame
PAGEBLOCK_BYTES = 4 * 8 + 8 * 8 + 2 * 4  # per 2 MiB pageblock: pb row, free bitmap, list links (frames.py)
PTE_BYTES = 9  # pagetable.py new_page_table: pte int32, flags uint8, token uint32 per page of every mm
SLOT_BYTES = 10  # swapdev.py new_swap_table: key int32, token uint32, eviction time 16 bits (reg) per swap slot
SPTE_BYTES = 5  # secondary.py SecondaryMMU: spte int32, sflags uint8 per page of its mm
ACCESS_BYTES = 24  # per access of a tick's batch, an upper bound: pages (int32, an int64 copy when offset), write flags
TIMESERIES_ROW_BYTES = 4096  # one time-series row: a dict of about 100 counters (measured ~2.5 KB)
GIB = 1 << 30


def estimate(settings: "Settings") -> dict[str, int]:
    """Bytes per part of the run described by ``settings`` (a ``settings.Settings``)."""
    from .frames import HINT_CAPACITY, PAGEBLOCK_PAGES
    from .host import MIB_PAGES
    from .timeseries import MAX_ROWS

    host = settings.host
    clients = [c for t in settings.tenants for c in t.clients]
    frames = host.memory_mib * MIB_PAGES + sum(c.device_pages for c in clients)
    sec_entries = sum(t.pages for t in settings.tenants for c in t.clients
                      if c.secondary is not None and not c.secondary[0].shares_cpu_tables)  # fmt: skip
    extra = 0
    for c in clients:  # what the components allocate per page of their region
        per_page = c.workload[0].memory_per_page + (c.secondary[0].memory_per_page if c.secondary else 0)
        extra += (c.region[1] - c.region[0]) * per_page
    batch = settings.engine.accesses_per_tick
    parts = {
        "frames": frames * FRAME_BYTES + -(-frames // PAGEBLOCK_PAGES) * PAGEBLOCK_BYTES + HINT_CAPACITY * 16,
        "page tables": sum(t.pages for t in settings.tenants) * PTE_BYTES,
        "swap slots": host.swap_mib * MIB_PAGES * SLOT_BYTES,
        "secondary tables": sec_entries * SPTE_BYTES,
        "workload tables": int(extra),
        "access batches": sum(c.accesses_per_tick or batch for c in clients) * ACCESS_BYTES,
        "time series": MAX_ROWS * TIMESERIES_ROW_BYTES if settings.engine.timeseries else 0,
    }
    return parts


def mem_available() -> int | None:
    """``MemAvailable`` from /proc/meminfo, in bytes; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check(settings: "Settings") -> None:
    """Raise ConfigError when the run needs more memory than the machine has or ``engine.max_memory_gib``."""
    parts = estimate(settings)
    need = sum(parts.values())
    limit, source = mem_available(), "the machine has {} GiB available (MemAvailable)"
    cap = settings.engine.max_memory_gib
    if cap is not None and (limit is None or cap * GIB < limit):
        limit, source = int(cap * GIB), "engine.max_memory_gib allows {} GiB"
    if limit is None or need <= limit:
        return
    largest = ", ".join(f"{k} {v / GIB:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:3] if v)
    raise ConfigError(
        f"memory: the run needs about {need / GIB:.2f} GiB ({largest} GiB) but {source.format(f'{limit / GIB:.2f}')}; "
        "shrink guest.memory_mib, host.memory_mib or host.swap_mib, or set engine.max_memory_gib"
    )
