"""An IOMMU shared-virtual-addressing (SVA) device as an mmnsim secondary MMU.

With SVA (Intel VT-d scalable mode, AMD IOMMUv2, Arm SMMUv3) a device bound to a process with a PASID
walks the process's own CPU page tables: the IOMMU keeps no table of its own, sets the accessed and
dirty bits in the CPU PTEs as the CPU does, and resolves a missing page through an I/O page fault (PRI)
that the kernel handles with handle_mm_fault. What it keeps is a TLB (the IOTLB, and the device's own
ATS cache), so all it needs from the kernel is to hear of every CPU TLB flush of the mm:
``arch_invalidate_secondary_tlbs`` (drivers/iommu/iommu-sva.c, intel/svm.c), called with the page-table
lock held, so it must not sleep or fail.

The framework does the rest once ``shares_cpu_tables`` is set: the device's accesses go through the
primary table, and the faults they take are counted as its secondary faults and charged ``fault_ns``.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import Mode, SecondaryConfig, SecondaryMMU, hookimpl, require


@dataclass
class IommuSvaConfig(SecondaryConfig):
    iotlb_invalidate_ns: float  # one PASID-selective IOTLB invalidation with its wait descriptor
    devtlb_invalidate_ns: float  # the device's ATS invalidation round trip, on top
    full_flush_pages: int  # a range at least this long flushes the whole PASID instead

    def __post_init__(self) -> None:
        require(self.mode is Mode.notifier, f"an SVA device shares the CPU page tables: mode must be notifier, "
                                            f"not {self.mode}")  # fmt: skip
        require(self.full_flush_pages >= 1, f"full_flush_pages must be >= 1, got {self.full_flush_pages}")
        for key in ("fault_ns", "iotlb_invalidate_ns", "devtlb_invalidate_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")


class IommuSva(SecondaryMMU):
    name = "iommu_sva"
    shares_cpu_tables = True  # no table of its own: it walks the CPU's, accessed bits included
    Config = IommuSvaConfig

    @hookimpl
    def arch_invalidate_secondary_tlbs(self, mm, start: np.ndarray, end: np.ndarray) -> None:
        """One invalidation per range, or one for the whole PASID once the ranges add up to a long one."""
        pages = int((end - start).sum())
        commands = 1 if pages >= self.cfg.full_flush_pages else int(start.size)
        cost = commands * (self.cfg.iotlb_invalidate_ns + self.cfg.devtlb_invalidate_ns)
        self.metrics["tlb_flushes"] += commands
        self.metrics["flush_cost_ns"] += cost
        self.sim.charge(cost)  # the CPU that flushed waits for the IOMMU's completion


@hookimpl
def register_components():
    return [IommuSva]
