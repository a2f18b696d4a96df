"""The host machine: its settings, and the arrays holding frames, page tables, swap and counters.

Watermarks follow mm/page_alloc.c: ``min_free_kbytes`` defaults to sqrt(16 x lowmem KiB) clamped to
[128 KiB, 256 MiB], shared among nodes by size; ``low = min + d`` and ``high = min + 2d`` with
``d = max(min / 4, managed x watermark_scale_factor / 10000)``.

``memcg: true`` makes ``memory_mib`` a memory cgroup's limit on the tenants instead (how most guests and
containers are limited, and how the real twin runs): the machine has room, so there are no watermarks and no
kswapd; a charge over the limit reclaims in the charging thread itself (mm/memcontrol.c try_charge_memcg ->
try_to_free_mem_cgroup_pages, at least SWAP_CLUSTER_MAX pages: mm/vmscan.c), and the OOM killer is the
cgroup's (mem_cgroup_out_of_memory). Simplified: one reclaim attempt before the OOM killer (the kernel retries
MAX_RECLAIM_RETRIES times), no per-CPU charge batches (MEMCG_CHARGE_BATCH), and a THP fault takes a free
pageblock or falls back without reclaiming for its 512 pages.

``read_stats_each_tick``: a monitor reads the cgroup's memory.stat at the end of every tick, which flushes its
statistics (mm/memcontrol-v1.c memcg1_stat_format -> mem_cgroup_flush_stats), so reclaim's heuristics see them
at most a tick old instead of up to ``kernel.lru_stats_flush_ms`` (``mmnsim.lru.lru_stats``). The real twin
does (framework/real/run.py: its per-tick row samples the group), so every run set beside it does too.
"""

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from . import counters
from .arguments import OperationError, int_array, node_arg, page_arg, pages_arg
from .config import ConfigError, require
from .frames import (
    FREEBLK,
    MEMCG,
    N_ON_LIST,
    NFREE,
    PAGE_SIZE,
    PAGEBLOCK_PAGES,
    PAGEBLOCK_SHIFT,
    PB_NODE,
    REG_FLAGS,
    THP_ENABLED,
    THP_MADVISE,
    WMARK_HIGH,
    WMARK_LOW,
    WMARK_MIN,
    new_frame_table,
)
from .pagetable import new_page_table, read_only, read_only_tables
from .swapdev import new_swap_table

MIB_PAGES = (1 << 20) // PAGE_SIZE
STATS_FLUSH_STREAM = 0x57A7  # the stats flusher's phase is drawn on a stream of its own (``Host._stats_phase``)
MAX_MIB = ((1 << 31) - 1) // MIB_PAGES  # page and frame numbers are int32 (pagetable.py, frames.py)
LOCAL_DISTANCE, REMOTE_DISTANCE = 10, 20  # include/linux/topology.h


class SwapDevice(StrEnum):
    """What the swap area is: a large folio (THP) is written whole only to a block device.

    mm/swapfile.c cluster_alloc_swap_entry (6.12+; scan_swap_map_slots before): "Swapfile is not block device
    so unable to allocate large entries" (``if (order && !(si->flags & SWP_BLKDEV)) return 0``), so reclaim
    splits every THP it swaps to a swap file (mm/vmscan.c shrink_folio_list: add_to_swap fails for the large
    folio, split_folio_to_list, THP_SWPOUT_FALLBACK)."""

    blockdev = "blockdev"  # a block device (zram, a partition): an old THP goes whole into a free cluster
    file = "file"  # a swap file on a filesystem (swapon of a regular file): every THP is split first


class OOM(StrEnum):
    """What happens when reclaim cannot free memory for an allocation."""

    kill = "kill"  # the OOM killer kills the worst tenant and the reaper frees its memory (mm/oom_kill.c)
    fail = "fail"  # the allocation fails, its access is skipped, and the tenant goes on (no OOM killer)


class THP(StrEnum):
    """/sys/kernel/mm/transparent_hugepage/enabled. With ``defrag`` at its default (``madvise``), a THP fault
    in an MADV_HUGEPAGE region may compact directly; elsewhere it takes a free pageblock or falls back."""

    always = "always"  # every anonymous fault tries a THP
    madvise = "madvise"  # only in MADV_HUGEPAGE regions (guests: QEMU madvises guest RAM)
    never = "never"


@dataclass
class HostConfig:
    memory_mib: int
    numa_nodes: int
    swap_mib: int
    watermark_scale_factor: int  # vm.watermark_scale_factor, in 1/10000 of memory
    min_free_kbytes: int  # vm.min_free_kbytes; 0 computes the kernel's default
    distance: list[list[int]] | None  # node distance matrix (SLIT); null = 10 local, 20 remote
    thp: THP  # transparent huge pages at fault time
    swap_write_error_rate: float  # fault injection: probability that a swap write fails
    swap_read_error_rate: float  # fault injection: probability that a swap read fails
    oom: OOM  # when reclaim cannot free memory: kill a tenant, or fail the allocation
    memcg: bool = False  # memory_mib is a memory cgroup's limit on the tenants: no watermarks, direct reclaim only
    swap_device: SwapDevice = SwapDevice.blockdev  # file: no large swap entries, every THP split to swap it out
    read_stats_each_tick: bool = False  # a monitor reads memory.stat after every tick, flushing the statistics

    def __post_init__(self) -> None:
        require(self.memory_mib > 0, f"memory_mib must be > 0, got {self.memory_mib}")
        require(
            self.memory_mib <= MAX_MIB,
            f"memory_mib must be <= {MAX_MIB} (frame numbers are int32), got {self.memory_mib}",
        )
        require(self.numa_nodes >= 1, f"numa_nodes must be >= 1, got {self.numa_nodes}")
        require(self.numa_nodes <= 1024, f"numa_nodes must be <= 1024 (MAX_NUMNODES), got {self.numa_nodes}")
        require(self.swap_mib >= 0, f"swap_mib must be >= 0, got {self.swap_mib}")
        require(self.swap_mib <= MAX_MIB, f"swap_mib must be <= {MAX_MIB} (swap slots are int32), got {self.swap_mib}")
        require(
            1 <= self.watermark_scale_factor <= 3000,
            f"watermark_scale_factor must be in [1, 3000] as in the kernel, got {self.watermark_scale_factor}",
        )
        require(0 <= self.swap_write_error_rate < 1, "swap_write_error_rate must be a probability in [0, 1) "
                f"(failing every write is no swap: set swap_mib=0), got {self.swap_write_error_rate}")  # fmt: skip
        require(0 <= self.swap_read_error_rate <= 1,
                f"swap_read_error_rate must be a probability in [0, 1], got {self.swap_read_error_rate}")  # fmt: skip
        require(self.min_free_kbytes >= 0, f"min_free_kbytes must be >= 0, got {self.min_free_kbytes}")
        require(
            self.memory_mib * MIB_PAGES // self.numa_nodes >= PAGEBLOCK_PAGES or self.numa_nodes == 1,
            f"numa_nodes={self.numa_nodes} leaves less than one 2 MiB pageblock per node of "
            f"memory_mib={self.memory_mib}",
        )
        if self.distance is not None:
            n = self.numa_nodes
            rows = [len(row) for row in self.distance]
            require(len(set(rows)) <= 1, f"distance must be a {n}x{n} matrix (numa_nodes={n}), got rows of {rows}")
            d = np.asarray(self.distance)
            require(d.shape == (n, n), f"distance must be a {n}x{n} matrix (numa_nodes={n}), got shape {d.shape}")
            require(bool(np.all(np.diag(d) == LOCAL_DISTANCE)), f"distance diagonal must be {LOCAL_DISTANCE}")
            require(
                bool(np.all(d[~np.eye(n, dtype=bool)] > LOCAL_DISTANCE)),
                f"distance between different nodes must be > {LOCAL_DISTANCE}",
            )
            require(bool(np.array_equal(d, d.T)), "distance must be symmetric")
        # Found here, for every job of a sweep before any runs, rather than when the host is built.
        _watermarks(_split(self.memory_mib * MIB_PAGES, self.numa_nodes), self.min_free_kbytes,
                    self.watermark_scale_factor)  # fmt: skip


class Watermarks(NamedTuple):
    """A zone's min, low and high watermarks, in frames (__setup_per_zone_wmarks): below low, kswapd wakes
    and frees up to high; at min, allocations enter direct reclaim."""

    min: int
    low: int
    high: int


class Host:
    """Frames, swap, page tables and counters of one simulated machine.

    Nodes ``0 .. numa_nodes - 1`` are the host's RAM. Device-private memory (a GPU's VRAM, as ZONE_DEVICE
    pages) comes as extra nodes after them, one per ``device_frames`` entry: frames with struct pages but
    no CPU access, never on an allocation fallback list, never reclaimed.
    """

    def __init__(self, cfg: HostConfig, mm_pages: list[int], device_frames: list[int] = (), seed: int = 0):
        self.cfg = cfg
        self.nframes = cfg.memory_mib * MIB_PAGES  # host RAM; device memory not included
        self.nodes = cfg.numa_nodes
        self.node_frames = tuple(_split(self.nframes, self.nodes))
        self.distance = read_only(
            np.asarray(cfg.distance, dtype=np.int64)
            if cfg.distance is not None
            else np.where(np.eye(self.nodes, dtype=bool), LOCAL_DISTANCE, REMOTE_DISTANCE)
        )
        # Under a memory cgroup's limit there are no watermarks (the machine has room; the limit is what binds):
        # a charge over the limit reclaims directly, in the charging thread (try_charge_memcg).
        marks = (np.zeros((self.nodes, 3), dtype=np.int64) if cfg.memcg else
                 _watermarks(self.node_frames, cfg.min_free_kbytes, cfg.watermark_scale_factor))  # fmt: skip
        self.watermarks = read_only(marks)  # [node, (min, low, high)], read-only: read them through watermark()
        self.device_nodes = tuple(range(self.nodes, self.nodes + len(device_frames)))
        self.ft = new_frame_table(
            [*self.node_frames, *device_frames],
            self.distance,
            np.concatenate([self.watermarks, np.zeros((len(device_frames), 3), dtype=np.int64)]),
        )
        if cfg.thp is not THP.never:
            self.ft.reg[REG_FLAGS] |= THP_ENABLED | (THP_MADVISE if cfg.thp is THP.madvise else 0)
        if cfg.memcg:
            self.ft.reg[REG_FLAGS] |= MEMCG
        self.sw = new_swap_table(cfg.swap_mib * MIB_PAGES, cfg.swap_write_error_rate, cfg.swap_read_error_rate, seed)
        self.pt = new_page_table(mm_pages)
        # Reclaim's LRU statistics as of their last flush (``mmnsim.lru.lru_stats``): a new cgroup's, or a fresh
        # machine's, are zero. The periodic flusher runs on its own clock: its phase against the run is drawn
        # from the seed, on a stream of its own, so that every other draw of a run stays as it was.
        self._lru_stats = np.zeros(3, dtype=np.int64)  # inactive, active, refaults activated
        self._stats_phase = float(np.random.default_rng([seed, STATS_FLUSH_STREAM]).random())  # of a period
        self._stats_epoch = -1  # the flush the statistics are from (-1: none yet)
        self._ctr = counters.new_counters()  # the framework's (kernels and operations count into it)
        self.ctr = read_only(self._ctr)  # the kernel counters, read-only: ``sim.counter(name)`` reads one
        # The framework's writable tables (``_pt``, ``_ft``, ``_sw``: the kernels and the mm operations write
        # them) and the read-only views everyone else gets (``pt``, ``ft``, ``sw``): plugins read host state,
        # and change it only through the operations, which raise the notifiers.
        self._pt, self._ft, self._sw = self.pt, self.ft, self.sw
        self.pt, self.ft, self.sw = (read_only_tables(t) for t in (self._pt, self._ft, self._sw))
        pt, ft, sw = self._pt, self._ft, self._sw
        # The writable arrays in the order the access kernel takes them (``access.run_accesses``): numba types a
        # tuple of arrays field by field on every call, which costs more than passing the arrays.
        self._flat = (pt.pte, pt.flags, pt.token, pt.mm_base, pt.mm_flags, ft.key, ft.token, ft.pin, ft.ref, ft.pb,
                     ft.bits, ft.lists, ft.node, ft.node_order, ft.distance, ft.reg, ft.hints, sw.key, sw.token,
                     sw.free, sw.reg)  # fmt: skip

    @property
    def ram(self) -> np.ndarray:
        """The node table's rows for host RAM (not device memory)."""
        return self.ft.node[: self.nodes]

    def free_frames(self) -> int:
        """Free frames of host RAM."""
        return int(self.ram[:, NFREE].sum())

    def free_on(self, node: int) -> int:
        """Free frames on one node (RAM or device memory)."""
        return int(self.ft.node[self._node(node, "free_on"), NFREE])

    def watermark(self, node: int | None = None) -> Watermarks:
        """The watermarks of a RAM node, or (``node`` None) summed over all RAM nodes."""
        rows = self.watermarks if node is None else self.watermarks[self._node(node, "watermark", ram=True)][None]
        return Watermarks(*(int(v) for v in rows.sum(axis=0)))

    def is_pinned(self, frames: np.ndarray) -> np.ndarray:
        """For each frame: does a long-term pin hold it (folio_maybe_dma_pinned)? A copy, one bool each."""
        return self.ft.pin[pages_arg(frames, self.ft.key.size, "is_pinned", "frames")] > 0

    def pages_to_high(self) -> int:
        """Frames kswapd must free for every node to reach its high watermark."""
        return self._short_of(WMARK_HIGH)

    def high_watermarks(self) -> int:
        return int(self.ram[:, WMARK_HIGH].sum())

    def pages_to_low(self) -> int:
        return self._short_of(WMARK_LOW)

    def above_min(self) -> bool:
        """Whether any RAM node has free frames above its min watermark (an allocation can succeed)."""
        return any(free > wmin for wmin, free in self.ram[:, [WMARK_MIN, NFREE]].tolist())

    def _short_of(self, watermark: int) -> int:
        # Python ints: a node or two, asked once per reclaim round, where numpy's call overhead would dominate.
        return sum(max(w - free, 0) for w, free in self.ram[:, [watermark, NFREE]].tolist())

    def free_blocks(self, node: int) -> int:
        """Whole free pageblocks (order-9 blocks, room for a THP) on ``node``."""
        return int(self.ft.node[self._node(node, "free_blocks"), N_ON_LIST + FREEBLK])

    def pinned_pages(self) -> int:
        return int(np.count_nonzero(self.ft.pin))

    def node_of(self, frame: int) -> int:
        """The node (RAM or device memory) of one frame."""
        frame = page_arg(frame, self.ft.key.size, "node_of", "frame")
        return int(self.ft.pb[frame >> PAGEBLOCK_SHIFT, PB_NODE])

    def nodes_of(self, frames: np.ndarray) -> np.ndarray:
        """The node of each frame; -1 where ``frames`` holds no frame (a PTE that is not present: any
        negative value)."""
        frames = int_array(frames, "nodes_of", "frames")
        if frames.size and int(frames.max()) >= self.ft.key.size:
            raise OperationError(f"nodes_of: frames must be < {self.ft.key.size} (or negative: no frame), got "
                                 f"{int(frames.max())}")  # fmt: skip
        return np.where(frames >= 0, self.ft.pb[np.maximum(frames, 0) >> PAGEBLOCK_SHIFT, PB_NODE], -1)

    def _node(self, node: object, op: str, ram: bool = False) -> int:
        """A node number, checked: RAM nodes, then (unless ``ram``) device-memory nodes."""
        if ram:
            return node_arg(node, self.nodes, op, "RAM nodes")
        return node_arg(node, self.ft.node.shape[0], op, "RAM nodes, then device memory")

    def swap_used(self) -> int:
        return int(self.sw.reg[1])


def _split(nframes: int, nodes: int) -> list[int]:
    """Node sizes: equal shares in whole pageblocks, the remainder on the last node."""
    share = (nframes // nodes) // PAGEBLOCK_PAGES * PAGEBLOCK_PAGES
    sizes = [share] * nodes
    sizes[-1] = nframes - share * (nodes - 1)
    return sizes


def _watermarks(node_frames: list[int], min_free_kbytes: int, scale_factor: int) -> np.ndarray:
    total = sum(node_frames)
    if min_free_kbytes == 0:
        lowmem_kb = total * PAGE_SIZE // 1024
        min_free_kbytes = min(max(math.isqrt(lowmem_kb * 16), 128), 262144)
    pages_min = min_free_kbytes // (PAGE_SIZE // 1024)
    out = np.zeros((len(node_frames), 3), dtype=np.int64)
    for n, managed in enumerate(node_frames):
        wmin = pages_min * managed // total
        delta = max(wmin // 4, managed * scale_factor // 10000)
        out[n] = (wmin, wmin + delta, wmin + 2 * delta)
        if out[n, 2] >= managed:
            raise ConfigError(
                f"host watermarks ({out[n].tolist()} frames) leave no usable memory on node {n} "
                f"({managed} frames): lower host.min_free_kbytes or host.watermark_scale_factor"
            )
    return out
