"""VFIO device passthrough: a PCI device (a NIC, an NVMe drive, a GPU) assigned to a guest, doing DMA to guest
memory through the IOMMU.

When a device is assigned, the VMM maps all of guest RAM for DMA (QEMU's vfio listener, VFIO_IOMMU_MAP_DMA per
memory region, or IOMMU_IOAS_MAP with iommufd). The kernel pins every page of it long-term and maps it in the
IOMMU at that moment (drivers/vfio/vfio_iommu_type1.c vfio_pin_map_dma: vfio_pin_pages_remote pins a
physically contiguous chunk, vfio_iommu_map maps it with iommu_map; iommufd does the same through
drivers/iommu/iommufd/pages.c pfn_reader_user_pin). There is no notifier: the IOMMU's table never changes
until the VM goes away, so the pages can be neither reclaimed, nor migrated, nor compacted, nor collapsed. The
device never faults.

All or nothing. Every pinned page counts against the VMM's RLIMIT_MEMLOCK (vfio_pin_pages_remote checks
``mm->locked_vm + lock_acct + 1 > limit`` and returns -ENOMEM, "RLIMIT_MEMLOCK exceeded"; iommufd's
incr_user_locked_vm likewise), and a page that cannot be faulted in fails the pin. On any failure
vfio_pin_map_dma unwinds the whole mapping (vfio_remove_dma: unmap and unpin what was pinned), and QEMU,
whose vfio listener cannot map guest RAM at start, fails to realize the device and exits: the VM does not
start. The simulation does the same: the pages pinned so far are unpinned, the guest's mm is released and its
clients never run (``vfio.start_failures``); the other tenants go on. ``memlock_mib: null`` is what libvirt does
(it raises the limit to the guest's RAM size, plus some), so only a shortage of memory makes the pin fail.

No fault-driven alternative for passthrough. ``mode`` must be ``pin``: the kernel has no page-fault path for
a VFIO device's mapping of guest memory (an "IOPF for VFIO type1" series was posted in 2021 and not merged;
iommufd's fault objects deliver I/O page faults on a guest-owned stage-1 table to the VMM, while the stage-2
mapping of guest RAM stays pinned in the IOAS). A device that faults on a process's memory exists for shared
virtual addressing with PRI (drivers/iommu/iommu-sva.c): see ``examples/iommu_sva``; or use the ``rdma`` and
``gpu`` plugins in notifier mode (on-demand paging, SVM).

Simplified: the DMA mapping is one region (the guest's RAM, or ``region_*``), the memlock limit counts only
this device's pins, and iommu_map cost is per physically contiguous chunk, as vfio_pin_map_dma maps them.
"""

import logging
from dataclasses import dataclass

import numpy as np

from mmnsim import REGISTRATION_METRICS, Metric, Mode, SecondaryConfig, SecondaryMMU, device_region, hookimpl, require

log = logging.getLogger("mmnsim")

MIB_PAGES = 256


@dataclass
class VFIOConfig(SecondaryConfig):
    region_start_mib: int
    region_mib: int | None  # null: to the end of the mm (all of guest RAM, as QEMU maps it)
    memlock_mib: int | None  # RLIMIT_MEMLOCK of the VMM; null: unlimited (libvirt raises it to the RAM size)
    pin_page_ns: float  # pinning one page and accounting it (vfio_pin_pages_remote)
    iommu_map_ns: float  # one iommu_map call for a physically contiguous chunk (with its IOTLB sync)

    def __post_init__(self) -> None:
        require(
            self.mode is Mode.pin,
            f"vfio: mode must be pin, not {self.mode}: VFIO and iommufd pin all of guest RAM for a passthrough "
            "device and have no page-fault path for it; for a device that faults on a process's memory use "
            "examples/iommu_sva (SVA with PRI), or secondary=rdma|gpu with mode=notifier",
        )
        require(self.memlock_mib is None or self.memlock_mib >= 0,
                f"memlock_mib must be >= 0 or null (unlimited), got {self.memlock_mib}")  # fmt: skip
        for key in ("fault_ns", "pin_page_ns", "iommu_map_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")


class VFIO(SecondaryMMU):
    name = "vfio"
    young = False  # the IOMMU's accessed bits are not reported to reclaim
    huge = True  # iommu_map uses the largest page size the chunk allows
    Config = VFIOConfig
    declared_metrics = (
        *REGISTRATION_METRICS,
        Metric(
            "iommu_map_calls",
            "calls",
            int,
            "iommu_map calls at VM start, one per physically contiguous chunk (vfio_pin_map_dma)",
        ),
        Metric("start_failures", "VMs", int, "VMs that did not start because the VFIO pin failed"),
    )

    @classmethod
    def region_of(cls, cfg: VFIOConfig, mm_pages: int) -> tuple[int, int]:
        return device_region(cfg.region_start_mib, cfg.region_mib, mm_pages)

    @property
    def faults(self) -> bool:
        return False  # a passthrough device's DMA to an unmapped address is an IOMMU fault: an error

    def attach(self) -> None:
        """VFIO_IOMMU_MAP_DMA of the whole region at VM start: pin, then map, all or nothing."""
        for name in ("registered_pages", "iommu_map_calls", "registration_failures", "start_failures"):
            self.metrics[name] += 0  # reported even when zero
        start, end = self.region
        limit = None if self.cfg.memlock_mib is None else self.cfg.memlock_mib * MIB_PAGES
        want = end - start if limit is None else min(end - start, limit)
        mapped = self.populate(start, start + want) if want else 0
        self.client.stall(mapped * self.cfg.pin_page_ns)
        if want == end - start and mapped == want:
            frames = self.spte[start:end].astype(np.int64)
            chunks = 1 + int(np.count_nonzero(np.diff(frames) != 1))  # vfio_pin_pages_remote's contiguous runs
            self.client.stall(chunks * self.cfg.iommu_map_ns)
            self.metrics["registered_pages"] += mapped
            self.metrics["iommu_map_calls"] += chunks
            return
        # -ENOMEM (RLIMIT_MEMLOCK, or a page gup could not fault in): vfio_remove_dma unpins what was pinned,
        # and QEMU cannot start the VM.
        self.zap(np.array([start]), np.array([end]))
        self.metrics["registration_failures"] += 1
        self.metrics["start_failures"] += 1
        reason = "RLIMIT_MEMLOCK" if want < end - start else "memory"
        log.warning("vfio: %s could not pin %d of %d pages (%s): the VM does not start", self.label,
                    (end - start) - mapped, end - start, reason)  # fmt: skip
        self.client.tenant.killed = True  # its clients never run
        self.mm.exit()


@hookimpl
def register_components():
    return [VFIO]
