"""RDMA: a NIC reading and writing a memory region of an application's mm.

Pin mode is classic memory registration (ibv_reg_mr: ib_umem_get pins the region with
pin_user_pages(FOLL_LONGTERM)). The whole region is faulted in and pinned at registration, paying
``register_page_ns`` a page; the NIC's translations never change after, and it cannot fault: an access to
a page the registration could not map is an error.

Notifier mode is on-demand paging (IB_ACCESS_ON_DEMAND, drivers/infiniband/core/umem_odp.c): an interval
notifier over the region. A NIC access without a translation is a device page fault, resolved through
the primary table under the interval's sequence (ib_umem_odp_map_dma_and_lock: mmu_interval_read_begin,
fault, then mmu_interval_read_retry and retry on a collision), and costly (``fault_ns``). ``invalidate``
records the sequence, then drops the translations in blocks of ``mtt_block_pages``, one device
translation-table update per block it touched, and unmaps each page's DMA. ODP implements no young op,
so reclaim never learns that the NIC keeps using a page. Like mlx5, it refuses every non-blockable range
(the OOM reaper's), which the reaper then skips and retries.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import Metric, NotifierRange, SecondaryConfig, SecondaryMMU, device_region, hookimpl, require


@dataclass
class RDMAConfig(SecondaryConfig):
    region_start_mib: int  # where the memory region starts in the mm
    region_mib: int | None  # its size; null: to the end of the mm
    register_page_ns: float  # pin mode: registration cost per page (pin, DMA-map, MTT entry)
    mtt_block_pages: int  # pages per device translation-table block
    mtt_update_ns: float  # one MTT block update with its device cache invalidation
    dma_unmap_page_ns: float  # unmapping one page's DMA on invalidation

    def __post_init__(self) -> None:
        require(self.mtt_block_pages >= 1, f"mtt_block_pages must be >= 1, got {self.mtt_block_pages}")
        for key in ("fault_ns", "register_page_ns", "mtt_update_ns", "dma_unmap_page_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")


class RDMA(SecondaryMMU):
    name = "rdma"
    young = False  # ODP has no young op
    interval = True
    Config = RDMAConfig
    declared_metrics = (
        Metric("registered_pages", "pages", int, "pages pinned at registration (pin mode: userptr, ibv_reg_mr)"),
        Metric("registration_failures", "pages", int, "pages a registration could not fault in and pin"),
    )

    @classmethod
    def region_of(cls, cfg: RDMAConfig, mm_pages: int) -> tuple[int, int]:
        return device_region(cfg.region_start_mib, cfg.region_mib, mm_pages)

    @property
    def faults(self) -> bool:
        return not self.pin_mode  # a registered (pinned) MR cannot fault; ODP can

    def attach(self) -> None:
        super().attach()
        if self.pin_mode:  # ibv_reg_mr: fault in and pin the whole region now
            start, end = self.region
            mapped = self.populate(start, end)
            self.metrics["registered_pages"] += mapped
            self.metrics["registration_failures"] += (end - start) - mapped
            self.client.stall(mapped * self.cfg.register_page_ns)

    @hookimpl
    def invalidate(self, ranges: NotifierRange, cur_seq: int) -> bool:
        if not ranges.blockable:  # mlx5_ib_invalidate_range (drivers/infiniband/hw/mlx5/odp.c) refuses them all
            return False
        self.set_seq(cur_seq)
        pages = ranges.pages()
        mapped = pages[self.spte[pages] >= 0]
        blocks = np.unique(mapped // self.cfg.mtt_block_pages).size
        zapped = int(self.zap(ranges.start, ranges.end).sum())
        cost = blocks * self.cfg.mtt_update_ns + zapped * self.cfg.dma_unmap_page_ns
        self.metrics["tlb_flushes"] += blocks  # device translation-cache invalidations
        self.metrics["flush_cost_ns"] += cost
        self.sim.charge(cost)
        return True


@hookimpl
def register_components():
    return [RDMA]
