"""GPU shared virtual memory: a GPU mapping a region of an application's mm through its own page tables.

Notifier mode is HMM-style SVM (drivers/gpu/drm/amd/amdkfd/kfd_svm.c, nouveau, NVIDIA's UVM): an interval
notifier over the region. GPU faults are replayable and serviced in batches of ``fault_batch`` (256 by
default, as NVIDIA's UVM driver), each batch costing ``batch_ns`` plus ``fault_ns`` per fault.
``invalidate`` skips MIGRATE and EXCLUSIVE events the GPU itself caused (``ranges.owner`` is this GPU), as
the kernel's drivers do; otherwise it records the sequence, drops its translations, updates the GPU page
table for each range and flushes the GPU TLB once for each range that dropped anything. Like RDMA, SVM has no
young op: reclaim does not see GPU accesses.

With ``device_memory_mib`` the GPU brings device-private memory (VRAM as ZONE_DEVICE pages) and, with
``migrate_hot_pages``, each tick moves up to that many of the pages it used since the last tick into it
(migrate_vma: event MIGRATE with the GPU as owner, so every other secondary MMU drops the page while the
GPU's own notifier skips it and the GPU repoints its entries at VRAM). The CPU cannot touch VRAM: a CPU
access, or another device's, faults and the page migrates back to RAM (dev_pagemap_ops.migrate_to_ram).

Pin mode is userptr (amdgpu/i915 userptr objects): the region is pinned when the buffer is created; the GPU
does not fault on it, and an access the pinning could not map is an error.
"""

import math
from dataclasses import dataclass

import numpy as np

from mmnsim import Event, Metric, NotifierRange, SecondaryConfig, SecondaryMMU, device_region, hookimpl, require
from mmnsim.pagebits import P_DEVICE, S_ACCESSED


@dataclass
class GPUConfig(SecondaryConfig):
    region_start_mib: int
    region_mib: int | None  # null: to the end of the mm
    fault_batch: int  # replayable faults serviced per batch
    batch_ns: float  # fixed cost of servicing one batch (interrupt, fault buffer, replay)
    register_page_ns: float  # pin mode: pinning one userptr page
    pt_update_ns: float  # one GPU page-table update, per invalidated range
    tlb_flush_ns: float  # one GPU TLB invalidation
    device_memory_mib: int  # device-private memory (VRAM) for migrated pages; 0: none
    migrate_hot_pages: int  # pages the GPU used that move to VRAM per tick; 0: no migration
    migrate_page_ns: float  # copying one page between RAM and VRAM

    def __post_init__(self) -> None:
        require(self.fault_batch >= 1, f"fault_batch must be >= 1, got {self.fault_batch}")
        for key in ("fault_ns", "batch_ns", "register_page_ns", "pt_update_ns", "tlb_flush_ns", "migrate_page_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")
        require(self.device_memory_mib >= 0, f"device_memory_mib must be >= 0, got {self.device_memory_mib}")
        require(self.migrate_hot_pages >= 0, f"migrate_hot_pages must be >= 0, got {self.migrate_hot_pages}")
        require(
            self.migrate_hot_pages == 0 or self.device_memory_mib > 0,
            "migrate_hot_pages needs device_memory_mib > 0 (somewhere to migrate to)",
        )


class GPU(SecondaryMMU):
    name = "gpu"
    young = False
    huge = True  # GPU page tables map 2 MiB where the CPU does
    interval = True
    Config = GPUConfig
    declared_metrics = (
        Metric("fault_batches", "batches", int, "GPU fault batches serviced (fault_batch faults each)"),
        Metric("registered_pages", "pages", int, "pages pinned at registration (pin mode: userptr, ibv_reg_mr)"),
        Metric("registration_failures", "pages", int, "pages a registration could not fault in and pin"),
        Metric("own_events_skipped", "ranges", int, "MIGRATE/EXCLUSIVE invalidations the device raised itself "
               "and skipped (owner check)"),
        Metric("migrated_to_ram", "pages", int, "device-private pages brought back to RAM (migrate_to_ram)"),
        Metric("migrated_pages", "pages", int, "pages the GPU migrated, to VRAM or back"),
    )  # fmt: skip

    @classmethod
    def region_of(cls, cfg: GPUConfig, mm_pages: int) -> tuple[int, int]:
        return device_region(cfg.region_start_mib, cfg.region_mib, mm_pages)

    @classmethod
    def device_memory_pages(cls, cfg: GPUConfig) -> int:
        return cfg.device_memory_mib * 256

    @property
    def faults(self) -> bool:
        return not self.pin_mode

    def fault_cost_ns(self, faults: int) -> float:
        batches = math.ceil(faults / self.cfg.fault_batch)
        self.metrics["fault_batches"] += batches
        return batches * self.cfg.batch_ns + faults * self.cfg.fault_ns

    def attach(self) -> None:
        super().attach()
        if self.pin_mode:  # userptr: pin the whole region when the buffer object is created
            start, end = self.region
            mapped = self.populate(start, end)
            self.metrics["registered_pages"] += mapped
            self.metrics["registration_failures"] += (end - start) - mapped
            self.client.stall(mapped * self.cfg.register_page_ns)

    @hookimpl
    def invalidate(self, ranges: NotifierRange, cur_seq: int) -> bool:
        if ranges.event in (Event.MIGRATE, Event.EXCLUSIVE) and ranges.owner is self:
            self.metrics["own_events_skipped"] += 1
            return True
        self.set_seq(cur_seq)
        zapped = self.zap(ranges.start, ranges.end)
        flushes = int(np.count_nonzero(zapped))  # one GPU TLB flush per range that dropped anything
        cost = len(ranges) * self.cfg.pt_update_ns + flushes * self.cfg.tlb_flush_ns
        self.metrics["tlb_flushes"] += flushes
        self.metrics["flush_cost_ns"] += cost
        self.sim.charge(cost)
        self.client.stall(flushes * self.cfg.tlb_flush_ns)  # the GPU waits out its TLB flushes
        return True

    @hookimpl
    def host_tick(self, sim) -> None:
        """Move pages the GPU used since the last tick into VRAM, while there is room."""
        if not self.cfg.migrate_hot_pages or self.pin_mode:
            return
        start, end = self.region
        used = start + np.flatnonzero((self.sflags[start:end] & S_ACCESSED) != 0)
        self.harvest_accessed(np.array([start]), np.array([end]), clear=True)
        in_ram = used[(self.spte[used] >= 0) & ((self.mm.flags[used] & P_DEVICE) == 0)]
        room = sim.host.free_on(self.device_node)
        chosen = in_ram[: min(self.cfg.migrate_hot_pages, room)]
        if chosen.size == 0:
            return
        moved = sim.migrate(self.mm, chosen, self.device_node, owner=self)
        now_vram = chosen[(self.mm.flags[chosen] & P_DEVICE) != 0]
        self.spte[now_vram] = self.mm.pte[now_vram]  # our own notifier skipped the event: repoint ourselves
        self._charge_migration(moved)

    def migrate_to_ram(self, pages: np.ndarray, node: int) -> None:
        moved = self.sim.migrate(self.mm, pages, node, owner=self)
        self.zap(pages, pages + 1)  # the GPU faults the RAM page back in when it next needs it
        self.metrics["migrated_to_ram"] += moved
        self._charge_migration(moved)

    def _charge_migration(self, pages: int) -> None:
        self.metrics["migrated_pages"] += pages
        self.sim.charge(pages * self.cfg.migrate_page_ns)


@hookimpl
def register_components():
    return [GPU]
