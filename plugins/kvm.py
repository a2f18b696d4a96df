"""KVM: guest memory, one memslot over the VMM's whole mm, mapped by EPT (or shadow) page tables and
accessed by the guest's vCPUs.

Notifier mode follows virt/kvm/kvm_main.c. ``invalidate_range_start`` raises mmu_invalidate_in_progress,
zaps every spte in the ranges and, for each range that zapped anything, flushes the remote TLBs
(kvm_flush_remote_tlbs: one request and an IPI to every vCPU in guest mode). ``invalidate_range_end`` bumps
mmu_invalidate_seq and lowers in_progress; the framework's fault path retries a fault whose page lies in
the range being invalidated, or that began before the sequence moved, as mmu_invalidate_retry_gfn does.
KVM filters no event type: every event zaps. Aging test-and-clears the spte accessed bits; x86 elides
the TLB flush when aging (KVM_ELIDE_TLB_FLUSH_IF_YOUNG), other architectures flush each range found
young (``flush_on_age``).

Pin mode is KVM before mmu notifiers (2.6.25): every page it maps stays pinned (get_user_pages) until the
VM is destroyed, and it never subscribes, so reclaim, migration and compaction must leave those pages
alone.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import Metric, NotifierRange, SecondaryConfig, SecondaryMMU, hookimpl, require
from mmnsim.pagebits import S_WRITABLE, clear_mask


@dataclass
class KVMConfig(SecondaryConfig):
    zap_page_ns: float  # clear one spte under mmu_lock
    remote_flush_ns: float  # the requesting CPU's side of kvm_flush_remote_tlbs
    flush_ipi_ns: float  # what one vCPU loses to a flush request: kick, exit, flush, re-entry
    age_page_ns: float  # test-and-clear one spte accessed bit
    flush_on_age: bool  # flush after aging found a range young (non-x86); x86 elides it

    def __post_init__(self) -> None:
        for key in ("fault_ns", "zap_page_ns", "remote_flush_ns", "flush_ipi_ns", "age_page_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")


class KVM(SecondaryMMU):
    name = "kvm"
    young = True
    huge = True  # a THP in the host is mapped by a 2 MiB spte (the host-mapping-level rule)
    Config = KVMConfig
    declared_metrics = (
        Metric("young_pages_aged", "pages", int, "spte accessed bits test-and-cleared for reclaim (aging)"),
        Metric("change_pte_applied", "pages", int, "sptes repointed by change_pte (kvm_change_spte_gfn)"),
    )

    def walk_refs(self, huge: bool) -> int:
        """A two-dimensional walk: each of the guest's 4 levels (4 KiB guest pages assumed) and the final
        address need a walk of the EPT, 4 levels deep, or 3 through a 2 MiB spte: (4 + 1) x (4 + 1) - 1 =
        24 references (Bhargava et al., ASPLOS 2008), (4 + 1) x (3 + 1) - 1 = 19 with 2 MiB sptes."""
        return 19 if huge else 24

    def _flush_remote_tlbs(self, flushes: int) -> None:
        if not flushes:
            return
        vcpus = self.client.vcpus
        self.metrics["tlb_flushes"] += flushes
        self.metrics["tlb_flush_ipis"] += flushes * vcpus
        self.metrics["flush_cost_ns"] += flushes * (self.cfg.remote_flush_ns + vcpus * self.cfg.flush_ipi_ns)
        self.sim.charge(flushes * self.cfg.remote_flush_ns)
        self.client.stall(flushes * self.cfg.flush_ipi_ns)

    @hookimpl
    def invalidate_range_start(self, ranges: NotifierRange) -> None:
        self.begin_invalidate(ranges)
        zapped = self.zap(ranges.start, ranges.end)
        self.sim.charge(float(zapped.sum()) * self.cfg.zap_page_ns)
        self._flush_remote_tlbs(int(np.count_nonzero(zapped)))

    @hookimpl
    def invalidate_range_end(self, ranges: NotifierRange) -> None:
        self.end_invalidate()

    def _age(self, start: np.ndarray, end: np.ndarray, flush: bool) -> np.ndarray:
        young = self.harvest_accessed(start, end, clear=True)
        aged = float((end - start).sum())
        self.metrics["young_pages_aged"] += aged
        self.sim.charge(aged * self.cfg.age_page_ns)
        if flush and self.cfg.flush_on_age:
            self._flush_remote_tlbs(int(np.count_nonzero(young)))
        return young

    @hookimpl
    def clear_flush_young(self, mm, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return self._age(start, end, flush=True)

    @hookimpl
    def clear_young(self, mm, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return self._age(start, end, flush=False)

    @hookimpl
    def test_young(self, mm, pages: np.ndarray) -> np.ndarray:
        return self.harvest_accessed(pages, pages + 1, clear=False)

    @hookimpl
    def release(self, mm) -> None:
        """kvm_mmu_notifier_release: zap the whole guest (kvm_flush_shadow_all)."""
        zapped = self.zap(np.array([0]), np.array([self.mm.npages]))
        self._flush_remote_tlbs(int(np.count_nonzero(zapped)))

    @hookimpl
    def change_pte(self, mm, pages: np.ndarray, frames: np.ndarray) -> None:
        """kvm_change_spte_gfn (removed in 2024): repoint a present spte, read-only."""
        present = self.spte[pages] >= 0
        self.spte[pages[present]] = frames[present]
        self.sflags[pages[present]] &= clear_mask(S_WRITABLE)
        self.metrics["change_pte_applied"] += float(present.sum())


@hookimpl
def register_components():
    return [KVM]
