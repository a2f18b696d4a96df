"""RDMA: a NIC reading and writing a memory region of an application's mm.

Pin mode is classic memory registration (ibv_reg_mr: ib_umem_get in drivers/infiniband/core/umem.c pins
the region with pin_user_pages_fast(FOLL_LONGTERM)). The whole region is faulted in and pinned at
registration, paying ``register_page_ns`` a page; the NIC's translations never change after, and it cannot
fault. Registration is all or nothing: ib_umem_get adds the region's pages to mm->pinned_vm and fails with
-ENOMEM if that exceeds RLIMIT_MEMLOCK (``memlock_mib``; null: unlimited, as with CAP_IPC_LOCK or
``ulimit -l unlimited``), and if a page cannot be pinned it releases every page already pinned
(__ib_umem_release) and fails. Then there is no memory region: the registration counts as failed and every
access the NIC makes to it is an error (a remote access error, IBV_WC_REM_ACCESS_ERR).

Notifier mode is on-demand paging (IB_ACCESS_ON_DEMAND, drivers/infiniband/core/umem_odp.c): an interval
notifier over the region. A NIC access without a translation is a device page fault, resolved through
the primary table under the interval's sequence (ib_umem_odp_map_dma_and_lock: mmu_interval_read_begin,
fault, then mmu_interval_read_retry and retry on a collision), and costly (``fault_ns``). A device fault
stops the queue pair that took it until the driver resumes it (mlx5_ib_page_fault_resume): the NIC is one
client issuing its accesses in order, so the fault's whole latency is charged to that client as a stall,
and every access queued behind it waits, not only the faulting one. ``invalidate`` follows
mlx5_ib_invalidate_range (drivers/infiniband/hw/mlx5/odp.c), once per range: it records the sequence, then
walks the range's pages and zaps the device's MTT entries with one UMR (mlx5r_umr_update_xlt, costing
``mtt_update_ns``) per block of mapped pages; a block is closed only at an unmapped page whose index in the
region is a multiple of ``UMR_ALIGN_PAGES`` (MLX5_UMR_MTT_NUM_ENTRIES_ALIGNMENT, 8 entries of 64 bytes), so
small holes do not split a block. Then it unmaps each page's DMA (ib_umem_odp_unmap_dma_pages). ODP
implements no young op, so reclaim never learns that the NIC keeps using a page. Like mlx5, it refuses
every non-blockable range (the OOM reaper's), which the reaper then skips and retries.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import (
    REGISTRATION_METRICS,
    Metric,
    NotifierRange,
    SecondaryConfig,
    SecondaryMMU,
    device_region,
    hookimpl,
    require,
)

UMR_ALIGN_PAGES = 8  # MLX5_UMR_MTT_NUM_ENTRIES_ALIGNMENT: MLX5_UMR_FLEX_ALIGNMENT (64 B) / sizeof(mlx5_mtt)
MIB_PAGES = 256


@dataclass
class RDMAConfig(SecondaryConfig):
    region_start_mib: int  # where the memory region starts in the mm
    region_mib: int | None  # its size; null: to the end of the mm
    memlock_mib: int | None  # pin mode: RLIMIT_MEMLOCK for the registration; null: unlimited
    register_page_ns: float  # pin mode: registration cost per page (pin, DMA-map, MTT entry)
    mtt_update_ns: float  # one UMR posted to zap a block of MTT entries, with its completion
    dma_unmap_page_ns: float  # unmapping one page's DMA on invalidation

    def __post_init__(self) -> None:
        require(self.memlock_mib is None or self.memlock_mib >= 0,
                f"memlock_mib must be >= 0 or null (unlimited), got {self.memlock_mib}")  # fmt: skip
        for key in ("fault_ns", "register_page_ns", "mtt_update_ns", "dma_unmap_page_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")


class RDMA(SecondaryMMU):
    name = "rdma"
    young = False  # ODP has no young op
    interval = True
    Config = RDMAConfig
    declared_metrics = (
        *REGISTRATION_METRICS,
        Metric(
            "umrs",
            "UMRs",
            int,
            "UMRs posted by invalidations, one per block of mapped pages (mlx5_ib_invalidate_range)",
        ),
    )

    @classmethod
    def region_of(cls, cfg: RDMAConfig, mm_pages: int) -> tuple[int, int]:
        return device_region(cfg.region_start_mib, cfg.region_mib, mm_pages)

    @property
    def faults(self) -> bool:
        return not self.pin_mode  # a registered (pinned) MR cannot fault; ODP can

    def fault_cost_ns(self, faults: int) -> float:
        """A device fault stops the queue pair until the driver resumes it: the whole latency is a stall of
        the client (not shared among its CPUs as a CPU fault's time would be)."""
        self.client.stall(faults * float(self.cfg.fault_ns))
        return 0.0

    def attach(self) -> None:
        super().attach()
        if self.pin_mode:  # ibv_reg_mr: fault in and pin the whole region now, or fail whole
            start, end = self.region
            limit = None if self.cfg.memlock_mib is None else self.cfg.memlock_mib * MIB_PAGES
            mapped = 0
            if limit is None or end - start <= limit:  # ib_umem_get: pinned_vm > RLIMIT_MEMLOCK -> -ENOMEM
                mapped = self.populate(start, end)
                self.client.stall(mapped * self.cfg.register_page_ns)
            if mapped == end - start:
                self.metrics["registered_pages"] += mapped
                return
            self.zap(np.array([start]), np.array([end]))  # __ib_umem_release: unpin what was pinned
            self.metrics["registration_failures"] += 1

    @hookimpl
    def invalidate(self, ranges: NotifierRange, cur_seq: int) -> bool:
        if not ranges.blockable:  # mlx5_ib_invalidate_range (drivers/infiniband/hw/mlx5/odp.c) refuses them all
            return False
        self.set_seq(cur_seq)
        umrs = self._umr_blocks(ranges)
        zapped = int(self.zap(ranges.start, ranges.end).sum())
        cost = umrs * self.cfg.mtt_update_ns + zapped * self.cfg.dma_unmap_page_ns
        self.metrics["umrs"] += umrs
        self.metrics["tlb_flushes"] += umrs  # each UMR zaps MTT entries and the NIC's cached translations
        self.metrics["flush_cost_ns"] += cost
        self.sim.charge(cost)
        return True

    def _umr_blocks(self, ranges: NotifierRange) -> int:
        """The UMRs mlx5_ib_invalidate_range posts for ``ranges``, one call per range: a block opens at a
        mapped page and closes at an unmapped page whose index is a multiple of UMR_ALIGN_PAGES."""
        lo, hi = self.region
        start = np.clip(ranges.start, lo, hi)
        end = np.clip(ranges.end, lo, hi)
        lengths = end - start
        if not lengths.any():
            return 0
        rid = np.repeat(np.arange(start.size), lengths)
        pages = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        mapped = self.spte[pages] >= 0
        idx, rid = pages[mapped] - lo, rid[mapped]
        if idx.size == 0:
            return 0
        # A mapped page starts a block if it is its range's first, or an aligned index lies in the gap before it.
        new = np.ones(idx.size, dtype=bool)
        same = rid[1:] == rid[:-1]
        gap_closes = (idx[1:] - 1) // UMR_ALIGN_PAGES > idx[:-1] // UMR_ALIGN_PAGES
        new[1:] = ~same | gap_closes
        return int(np.count_nonzero(new))


@hookimpl
def register_components():
    return [RDMA]
