"""KVM: guest memory, one memslot over the VMM's whole mm, mapped by EPT (or shadow) page tables and
accessed by the guest's vCPUs.

Notifier mode follows virt/kvm/kvm_main.c. ``invalidate_range_start`` raises mmu_invalidate_in_progress,
zaps every spte in the ranges and, for each range that zapped anything, flushes the remote TLBs
(kvm_flush_remote_tlbs: one request and an IPI to every vCPU in guest mode). ``invalidate_range_end`` bumps
mmu_invalidate_seq and lowers in_progress; the framework's fault path retries a fault whose page lies in
the range being invalidated, or that began before the sequence moved, as mmu_invalidate_retry_gfn does.
KVM filters no event type: every event zaps. Aging test-and-clears the spte accessed bits. Since 6.13 x86
elides the TLB flush when aging (KVM_ELIDE_TLB_FLUSH_IF_YOUNG) and other architectures flush each range found
young (``flush_on_age``); 6.1 to 6.12 (``kernel=6.1``, ``kernel.young_flush``) flush on x86 too:
kvm_mmu_notifier_clear_flush_young goes through kvm_handle_hva_range with ``flush_on_ret`` set.

Pin mode is KVM before mmu notifiers (2.6.25): every page it maps stays pinned (get_user_pages) until the
VM is destroyed, and it never subscribes, so reclaim, migration and compaction must leave those pages
alone. Unpinned mode is what KVM could not do: drop the page reference after mapping it, without
subscribing; reclaim then frees frames the guest still reaches (the invariant checks count it).

Under ``kernel=2008`` (``sim.kernel``) KVM behaves as in 2.6.27 (virt/kvm/kvm_main.c, arch/x86/kvm/mmu.c):
reclaim's and migration's per-page invalidations arrive as ``invalidate_page``
(kvm_mmu_notifier_invalidate_page: mmu_notifier_seq++, kvm_unmap_hva, and kvm_flush_remote_tlbs if it
zapped); clear_flush_young flushes the remote TLBs whenever a spte was young
(kvm_mmu_notifier_clear_flush_young); under EPT (``paging: ept``) aging always answers "old"
(kvm_age_rmapp: "always return old for EPT"), so reclaim never sees the guest's accesses; and a fault
retries while any invalidation is in progress anywhere in the VM (mmu_notifier_retry checks
mmu_notifier_count).

Translation: a TLB miss costs a two-dimensional walk under EPT (guest levels, 3 with the guest's own 2 MiB
pages, ``guest.thp``; host levels, 3 through a 2 MiB spte), page-walk caches counted
(``mmnsim.costs.walk_refs``), and a TLB entry covers the smaller of the guest's and the host's page: a
2 MiB spte under 4 KiB guest pages only shortens the walk (splintering). Shadow paging
(``paging: shadow``) walks one table, as native.

Prefetch: under shadow paging a fault that maps one 4 KiB spte also maps the neighbours in its aligned block
of ``prefetch`` (PTE_PREFETCH_NUM, 8) whose host pages are present, up to the first that is not
(arch/x86/kvm/mmu/paging_tmpl.h FNAME(pte_prefetch), since 2.6.36), with their accessed bits clear; the TDP
MMU under EPT maps the faulting gfn alone (arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_map).
"""

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from mmnsim import Metric, NotifierRange, SecondaryConfig, SecondaryMMU, hookimpl, require, walk_refs
from mmnsim.pagebits import S_WRITABLE, clear_mask


class Paging(StrEnum):
    ept = "ept"  # two-dimensional paging (EPT/NPT): the hardware walks the guest's table and KVM's
    shadow = "shadow"  # KVM's shadow page tables map guest-virtual to host-physical: a one-dimensional walk


@dataclass
class KVMConfig(SecondaryConfig):
    zap_page_ns: float  # clear one spte under mmu_lock
    remote_flush_ns: float  # the requesting CPU's side of kvm_flush_remote_tlbs
    flush_ipi_ns: float  # what one vCPU loses to a flush request: kick, exit, flush, re-entry
    guest_mode_ns: float  # of each fault, the world switch both ways: guest mode to a flush request
    age_page_ns: float  # test-and-clear one spte accessed bit
    flush_on_age: bool  # flush after aging found a range young (non-x86); x86 elides it since 6.13
    paging: Paging  # ept (two-dimensional) or shadow paging
    prefetch: int  # shadow paging: sptes a fault may map in its aligned block (PTE_PREFETCH_NUM); 1: none

    def __post_init__(self) -> None:
        for key in ("fault_ns", "zap_page_ns", "remote_flush_ns", "flush_ipi_ns", "age_page_ns", "guest_mode_ns"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0 ns, got {getattr(self, key)}")
        require(self.prefetch in (1, 2, 4, 8, 16), f"prefetch must be 1, 2, 4, 8 or 16 sptes, got {self.prefetch}")


class KVM(SecondaryMMU):
    name = "kvm"
    young = True
    huge = True  # a THP in the host is mapped by a 2 MiB spte (the host-mapping-level rule)
    Config = KVMConfig
    declared_metrics = (
        Metric("young_pages_aged", "pages", int, "spte accessed bits test-and-cleared for reclaim (aging)"),
        Metric("change_pte_applied", "pages", int, "sptes repointed by change_pte (kvm_change_spte_gfn)"),
    )

    def __init__(self, sim, client, cfg: KVMConfig):
        # 2.6.27's mmu_notifier_retry (include/linux/kvm_host.h): retry while mmu_notifier_count != 0.
        self.retry_whole_vm = sim.kernel.retry_whole_vm
        # 2.6.27's EPT had no accessed bits (kvm_age_rmapp: "always return old for EPT"): reclaim cannot see
        # the guest's accesses, by CLOCK's reference bit or through the young ops.
        self.young = not (cfg.paging is Paging.ept and not sim.kernel.ept_accessed_bits)
        super().__init__(sim, client, cfg)
        self.guest_huge = client.tenant.guest_thp  # the guest kernel maps its memory with 2 MiB pages
        # The shadow MMU maps the present neighbours of a faulting gfn (paging_tmpl.h FNAME(pte_prefetch));
        # the TDP MMU of EPT/NPT maps the faulting gfn alone (tdp_mmu.c kvm_tdp_mmu_map).
        if cfg.paging is Paging.shadow and sim.kernel.spte_prefetch:
            self.set_prefetch(cfg.prefetch)
        for name in ("remote_tlb_flush", "vcpu_tlb_flushes"):
            self.metrics[name] += 0  # reported when zero: a VM whose vCPUs never got an IPI
        self._carried: dict[str, float] = {}  # _count's fractions

    def walk_refs(self, huge: bool) -> float:
        """Under EPT a two-dimensional walk: each guest level (4, or 3 with the guest's 2 MiB pages) and the
        final address need a walk of the EPT (4 levels, or 3 through a 2 MiB spte): 24 references for
        4K/4K, 19 for 4K/2M or 2M/4K, 15 for 2M/2M (Bhargava et al., ASPLOS 2008), of which the page-walk
        caches absorb most (``mmnsim.costs.walk_refs``). Shadow paging: one table, as a native walk, at the
        smaller of the two page sizes."""
        miss = self.sim.costs.pwc_miss
        guest = 3 if self.guest_huge else 4
        host = 3 if huge else 4
        if self.cfg.paging is Paging.shadow:
            return walk_refs(miss, max(guest, host))
        return walk_refs(miss, host, guest)

    def tlb_huge(self) -> bool:
        """A TLB entry caches the combined translation at the smaller page: 2 MiB only when the guest maps
        2 MiB pages too (a 2 MiB spte under 4 KiB guest pages is splintered)."""
        return self.guest_huge

    def guest_mode_ns(self, faults: int) -> float:
        """A fault's exit and re-entry, in guest mode to a flush request: vcpu_enter_guest (arch/x86/kvm/x86.c)
        sets vcpu->mode to IN_GUEST_MODE before the VM entry and back to OUTSIDE_GUEST_MODE only after the exit,
        and a KVM_REQUEST_WAIT request (KVM_REQ_TLB_FLUSH) kicks every vCPU not OUTSIDE_GUEST_MODE
        (virt/kvm/kvm_main.c kvm_request_needs_ipi). The handling between them is not. At most the fault's
        cost (``fault_ns``), of which it is a part."""
        return faults * min(float(self.cfg.guest_mode_ns), float(self.cfg.fault_ns))

    def _flush_remote_tlbs(self, flushes: int) -> None:
        """kvm_flush_remote_tlbs, ``flushes`` times (virt/kvm/kvm_main.c): a KVM_REQ_TLB_FLUSH request to every
        vCPU and an IPI to each one in guest mode (kvm_make_vcpus_request_mask: kvm_request_needs_ipi, which
        reads vcpu->mode). A vCPU outside the guest gets no IPI and performs one flush at its next entry for
        every request it missed (vcpu_enter_guest: kvm_check_request(KVM_REQ_TLB_FLUSH)): the vCPU whose thread
        serves a fault in the host (``sim.outside``: in direct reclaim, or asleep on a swap-in while kswapd
        reclaims), and each of the others unless it is in guest mode (``client.in_guest``: on its accesses or
        in a fault's world switch, ``guest_mode_ns``; not handling a fault, not stalled, not halted once its
        batch is done). ``remote_tlb_flush`` counts the requests that sent an IPI (kvm_make_all_cpus_request
        returned true); the requester's side, remote_flush_ns, is paid either way. Counts of kicked vCPUs are
        expected values, their fractions carried to the next request, so that a run stays determined by its
        seed."""
        if not flushes:
            return
        vcpus = self.client.vcpus
        outside = self.sim.outside is self.client
        others = vcpus - outside
        share = self.client.in_guest
        kicks = flushes * others * share
        self.metrics["tlb_flushes"] += flushes
        self._count("tlb_flush_ipis", kicks)
        self._count("remote_tlb_flush", flushes * (1.0 - (1.0 - share) ** others))  # at least one in the guest
        deferred = self.sim.deferred_flushes(self, flushes) if outside else 0
        if share < 1.0 and others:  # the others out of the guest take the requests of this episode at one entry
            deferred += others * (1.0 - share) * self.sim.deferred_flushes(self.client, flushes)
        self._count("vcpu_tlb_flushes", kicks + deferred)
        self.metrics["flush_cost_ns"] += flushes * self.cfg.remote_flush_ns + kicks * self.cfg.flush_ipi_ns
        self.sim.charge(flushes * self.cfg.remote_flush_ns)
        # Each kicked vCPU loses flush_ipi_ns per request: on average over the client's vCPUs, kicks / vcpus.
        self.client.stall(kicks * self.cfg.flush_ipi_ns / vcpus)

    def _count(self, name: str, expected: float) -> None:
        """Add ``expected`` to the count ``name``, the fraction carried to the next call."""
        total = self._carried.get(name, 0.0) + expected
        whole = math.floor(total + 1e-9)  # 1e-9: a sum of thirds that should be whole is whole
        self._carried[name] = total - whole
        self.metrics[name] += whole

    # Its invalidations and young ops are the standard ones, charged by charge_zap and charge_aging: the
    # framework's compiled reclaim path may do them for it (mmnsim.fastpath).
    fast_ops = frozenset({"invalidate_range_start", "invalidate_range_end", "clear_flush_young", "clear_young"})

    @hookimpl
    def invalidate_range_start(self, ranges: NotifierRange) -> None:
        self.begin_invalidate(ranges)
        zapped = self.zap(ranges.start, ranges.end)
        self.charge_zap(int(zapped.sum()), int(np.count_nonzero(zapped)))

    def charge_zap(self, pages: int, ranges: int) -> None:
        """kvm_unmap_gfn_range zapped ``pages`` sptes under mmu_lock, in ``ranges`` ranges that held one; each
        such range ends in kvm_flush_remote_tlbs."""
        self.sim.charge(float(pages) * self.cfg.zap_page_ns)
        self._flush_remote_tlbs(ranges)

    @hookimpl
    def invalidate_range_end(self, ranges: NotifierRange) -> None:
        self.end_invalidate()

    @hookimpl
    def invalidate_page(self, mm, pages: np.ndarray) -> None:
        """kvm_mmu_notifier_invalidate_page (2.6.27, virt/kvm/kvm_main.c), per page: mmu_notifier_seq++ under
        mmu_lock so that a fault that resolved the page earlier retries, kvm_unmap_hva, and
        kvm_flush_remote_tlbs() if anything was zapped ("we've to flush the tlb before the pages can be
        freed")."""
        self.bump_seq()
        zapped = self.zap(pages, pages + 1)
        self.charge_zap(int(zapped.sum()), int(np.count_nonzero(zapped)))

    def _age(self, start: np.ndarray, end: np.ndarray, flush: bool) -> np.ndarray:
        if not self.young:
            # 2.6.27 kvm_age_rmapp (arch/x86/kvm/mmu.c): "always return old for EPT" (shadow_accessed_mask
            # is 0); nothing cleared, so kvm_mmu_notifier_clear_flush_young does not flush either.
            self.metrics["young_pages_aged"] += float((end - start).sum())
            self.harvest_accessed(start, end, clear=True)  # no A bit in the EPT: the simulator's bits mean nothing
            return np.zeros(start.size, dtype=np.bool_)
        young = self.harvest_accessed(start, end, clear=True)
        self.charge_aging(int((end - start).sum()), int(np.count_nonzero(young)) if flush else 0)
        return young

    def charge_aging(self, pages: int, young_flushed: int) -> None:
        """kvm_age_gfn test-and-cleared ``pages`` spte accessed bits; ``clear_flush_young`` found
        ``young_flushed`` ranges young."""
        self.metrics["young_pages_aged"] += float(pages)
        self.sim.charge(float(pages) * self.cfg.age_page_ns)
        # x86 elides the flush since 6.13 (other architectures flush, flush_on_age); until 6.12, and in
        # 2.6.27, kvm_mmu_notifier_clear_flush_young flushed whenever aging found the range young.
        if young_flushed and (self.cfg.flush_on_age or self.sim.kernel.young_flush):
            self._flush_remote_tlbs(young_flushed)

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
