"""GPU shared virtual memory: a GPU mapping a region of an application's mm through its own page tables.

Notifier mode is HMM-style SVM (drivers/gpu/drm/amd/amdkfd/kfd_svm.c, nouveau, NVIDIA's UVM): an interval
notifier over the region. GPU faults are replayable and serviced in batches of ``fault_batch`` (256 by
default, as NVIDIA's UVM driver), each batch costing ``batch_ns`` plus ``fault_ns`` per fault. A batch stalls
the warps whose accesses faulted, not the whole GPU: of ``warps`` resident warps, the batch's faults hold at
most that many, each for the batch's service time, while the others run on; the GPU loses that share of its
time (UVM replays the faulting accesses once the batch is serviced; amdgpu's retry faults, XNACK, likewise).
A fault is serviced at the driver's granularity: the aligned block of ``fault_block_kib`` around the faulting
page is faulted in (swapped in, or allocated) and mapped together, through the framework's fault-around
(``set_fault_block``): amdgpu migrates and maps the granularity-aligned range around the fault
(svm_range_restore_pages; svm_default_granularity 9, 2 MiB), UVM services a fault by 64 KiB big pages and
prefetches up to 2 MiB. With ``xnack: false`` (no retry faults: amdgpu's default on most GPUs) an invalidation
cannot leave the GPU faulting: svm_range_evict quiesces all of the process's queues (kgd2kfd_quiesce_mm) and
schedules svm_range_restore_work after AMDGPU_SVM_RANGE_RESTORE_DELAY_MS, which revalidates and maps the
ranges and resumes the queues; evictions that come while the queues are down share one quiesce
(svms->evicted_ranges). The model charges ``quiesce_ns`` as a stall of the whole GPU once per tick with
evictions, and the restore's remapping as the GPU's next accesses to the evicted pages, at ``fault_ns`` a page
without fault batches.
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

from dataclasses import dataclass

import numpy as np

from mmnsim import (
    REGISTRATION_METRICS,
    Event,
    Metric,
    NotifierRange,
    SecondaryConfig,
    SecondaryMMU,
    device_region,
    hookimpl,
    require,
)
from mmnsim.pagebits import P_DEVICE, S_ACCESSED


@dataclass
class GPUConfig(SecondaryConfig):
    region_start_mib: int
    region_mib: int | None  # null: to the end of the mm
    fault_batch: int  # replayable faults serviced per batch
    batch_ns: float  # fixed cost of servicing one batch (interrupt, fault buffer, replay)
    warps: int  # resident warps: a fault batch stalls the faulting ones, the others run on
    fault_block_kib: int  # a fault maps the aligned block around the faulting page (the driver's granularity)
    xnack: bool  # retry faults on; false: an invalidation quiesces the process's queues instead
    quiesce_ns: float  # xnack off: queues evicted, restore delay, revalidation and resume
    register_page_ns: float  # pin mode: pinning one userptr page
    pt_update_ns: float  # one GPU page-table update, per invalidated range
    tlb_flush_ns: float  # one GPU TLB invalidation
    device_memory_mib: int  # device-private memory (VRAM) for migrated pages; 0: none
    migrate_hot_pages: int  # pages the GPU used that move to VRAM per tick; 0: no migration
    migrate_page_ns: float  # copying one page between RAM and VRAM

    def __post_init__(self) -> None:
        require(self.fault_batch >= 1, f"fault_batch must be >= 1, got {self.fault_batch}")
        require(self.warps >= 1, f"warps must be >= 1, got {self.warps}")
        kib = self.fault_block_kib
        require(kib >= 4 and kib & (kib - 1) == 0 and kib <= 2048,
                f"fault_block_kib must be a power of two from 4 to 2048 (4 KiB to 2 MiB), got {kib}")  # fmt: skip
        for key in ("fault_ns", "batch_ns", "register_page_ns", "pt_update_ns", "tlb_flush_ns", "migrate_page_ns",
                    "quiesce_ns"):  # fmt: skip
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
        *REGISTRATION_METRICS,
        Metric("prefetched_pages", "pages", int, "pages a GPU fault mapped around the faulting one (the "
               "driver's fault block)"),
        Metric("queue_quiesces", "quiesces", int, "process queue quiesces by invalidations with XNACK off "
               "(kgd2kfd_quiesce_mm)"),
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
        """The GPU's lost time for ``faults``: each batch's service time, times the share of warps it holds."""
        if not self.cfg.xnack:  # no fault batches: the restore worker remaps what the eviction dropped
            return faults * self.cfg.fault_ns
        full, rest = divmod(faults, self.cfg.fault_batch)
        batches = full + (rest > 0)
        self.metrics["fault_batches"] += batches
        lost = 0.0
        for size, count in ((self.cfg.fault_batch, full), (rest, int(rest > 0))):
            service = self.cfg.batch_ns + size * self.cfg.fault_ns
            lost += count * service * min(size, self.cfg.warps) / self.cfg.warps
        return lost

    def attach(self) -> None:
        super().attach()
        self._quiesced_tick = -1
        if not self.pin_mode:
            self.set_fault_block(self.cfg.fault_block_kib // 4)
        if self.pin_mode:  # userptr: pin the whole region when the buffer object is created
            start, end = self.region
            mapped = self.populate(start, end)
            self.metrics["registered_pages"] += mapped
            self.metrics["registration_failures"] += int(mapped < end - start)
            self.client.stall(mapped * self.cfg.register_page_ns)

    @hookimpl
    def invalidate(self, ranges: NotifierRange, cur_seq: int) -> bool:
        if ranges.event in (Event.MIGRATE, Event.EXCLUSIVE) and ranges.owner is self:
            self.metrics["own_events_skipped"] += 1
            return True
        self.set_seq(cur_seq)
        zapped = self.zap(ranges.start, ranges.end)
        if not self.cfg.xnack and zapped.any() and self._quiesced_tick != self.sim.tick:
            self._quiesced_tick = self.sim.tick  # svm_range_evict: the first eviction stops the queues
            self.metrics["queue_quiesces"] += 1
            self.client.stall(self.cfg.quiesce_ns)
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

    def fault_around(self, page: int) -> int:
        """The driver's granularity: the block around the fault, one page-table update for all of it."""
        mapped = super().fault_around(page)
        self.metrics["prefetched_pages"] += mapped
        self.sim.charge(self.cfg.pt_update_ns)
        return mapped

    def _charge_migration(self, pages: int) -> None:
        self.metrics["migrated_pages"] += pages
        self.sim.charge(pages * self.cfg.migrate_page_ns)


@hookimpl
def register_components():
    return [GPU]
