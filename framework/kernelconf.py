"""Which kernel is simulated. ``conf/kernel/*.yaml`` set these keys; three kernels are shipped:

* ``kernel=6.x`` (the default): Linux 6.13 and later (the sources cited are of 6.13 to 6.17).
* ``kernel=6.1``: Linux 6.1 to 6.12, the long-term kernels most hosts run (6.1, 6.6, 6.12): as ``6.x``
  but KVM flushes the remote TLBs when aging finds a young spte (``young_flush``), and reclaim reads its LRU
  statistics fresh (``lru_stats_flush_ms``, 6.1 to 6.11).
* ``kernel=2008``: 2.6.25 to 2.6.27, the first kernels with mmu notifiers (the kernel of the 2008 thread).

What differs, each from the kernel source of its time:

* ``interval_notifiers``: mmu_interval_notifier came in 5.5 (2019). Without it RDMA on-demand paging and
  GPU shared virtual memory do not exist: their registrations pin (ib_umem_get, userptr), so a device
  configured in notifier mode runs in pin mode (counted as ``forced_pin``), never rejected, so that every
  experiment runs on both kernels.
* ``invalidate_page``: until 4.13 (commit 369ea8242c0f, "mm/rmap: update to new mmu_notifier semantic"),
  try_to_unmap_one (mm/rmap.c) cleared each PTE with ptep_clear_flush_notify, which called the
  ``invalidate_page`` op once per page (include/linux/mmu_notifier.h of 2.6.27), not a start/end pair.
  Reclaim (swap-out) and page migration, both through try_to_unmap_one, then deliver their per-page
  invalidations as ``invalidate_page``.
* ``young_flush``: kvm_mmu_notifier_clear_flush_young (virt/kvm/kvm_main.c) flushes the remote TLBs
  whenever aging found a young spte, from 2.6.27 (``if (young) kvm_flush_remote_tlbs(kvm)``) to 6.12
  (kvm_handle_hva_range with ``.flush_on_ret = true``; __kvm_handle_hva_range flushes when the handler,
  kvm_age_gfn, returned young). 6.13 made the flush an arch choice (commit 2ebbe0308c29, "KVM: Allow arch
  code to elide TLB flushes when aging a young page": ``flush_on_ret =
  !IS_ENABLED(CONFIG_KVM_ELIDE_TLB_FLUSH_IF_YOUNG)``) and x86 elides it (commit b9883ee40d7e, "KVM: x86:
  Don't emit TLB flushes when aging SPTEs for mmu_notifiers": arch/x86/kvm/Kconfig, KVM_X86 selects
  KVM_ELIDE_TLB_FLUSH_IF_YOUNG), as x86's own ptep_clear_flush_young had for ten years. Other
  architectures still flush: ``secondary.flush_on_age``.
* ``ept_accessed_bits``: 2.6.27's kvm_age_rmapp (arch/x86/kvm/mmu.c) "always return old for EPT"
  (shadow_accessed_mask is 0 under EPT): an EPT guest's accesses are invisible to reclaim. Later kernels
  emulated the bit by zapping the EPT entry when aging (kvm_age_rmapp: "emulate the accessed bit for
  EPT"), then read the EPT accessed bits of processors that have them.
* ``retry_whole_vm``: 2.6.27's mmu_notifier_retry (include/linux/kvm_host.h) made a KVM fault retry while
  any invalidation was in progress anywhere in the VM (mmu_notifier_count); today's
  mmu_invalidate_retry_gfn retries only a fault inside the range being invalidated.

* ``spte_prefetch``: KVM's shadow MMU maps, beside the faulting gfn, the neighbours in its aligned block of
  8 whose host pages are present (arch/x86/kvm/mmu/paging_tmpl.h FNAME(pte_prefetch), PTE_PREFETCH_NUM),
  since 2.6.36 (Xiao Guangrong, "KVM: MMU: prefetch ptes when intercepted guest #PF", 2010); 2.6.27's
  shadow MMU mapped the faulting gfn alone. Under EPT today's TDP MMU maps the faulting gfn alone
  (arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_map walks [fault->gfn, fault->gfn + 1)), so it matters only
  with ``secondary.paging: shadow``.

* ``oom_reaper``: the OOM reaper came in 4.6 (2016, mm/oom_kill.c oom_reaper); before it an OOM victim's
  memory was freed only by its own exit (exit_mmap: mmu_notifier_release, then the unmap), so no
  non-blockable invalidation is ever raised.
* ``thp``: transparent huge pages came in 2.6.38 (commit 71e3aac0724f, "thp: transparent hugepage core",
  mm/huge_memory.c), with khugepaged (commit ba76149f47d8, "thp: khugepaged") and MADV_HUGEPAGE (commit
  0af4e98b6b09); ``compaction``: memory compaction came in 2.6.35 (commit 748446bb6b5a, "mm: compaction:
  memory compaction core", mm/compaction.c); ``numa_balancing``: automatic NUMA balancing came in 3.8
  (Mel Gorman's balancenuma series, commit cbee9f88ec1b "mm: numa: Add fault driven placement and
  migration"; kernel/sched/fair.c task_numa_work). A config that asks a kernel for one it lacks stops
  before any job, naming the key (``missing_features``, checked by ``mmnsim.settings``): ``host.thp``
  other than ``never``, ``madvise_hugepage`` (MADV_HUGEPAGE) on a guest or process, a policy whose
  ``kernel_features`` name it (``policies.defrag``: compaction and khugepaged; ``policies.numa``). The
  2008 kernel's own defaults turn them off (``conf/kernel/2008.yaml``: the guest's RAM is not
  MADV_HUGEPAGE, and the guest's kernel has no THP either, ``guest.thp: false``, which a config may still
  set: a guest's own page size is its kernel's, and a 2008 guest could back memory with hugetlbfs).

* ``lru_stats_flush_ms``: reclaim's heuristics (inactive_is_low, the refaults that let it deactivate, the
  workingset a refault is measured against) read the LRU lists' sizes from the memory cgroup's statistics
  (lruvec_page_state; global reclaim reads the root cgroup's), folded from per-CPU counters only when flushed.
  6.1 to 6.11 flushed them in every reclaim pass (mm/vmscan.c prepare_scan_control -> mem_cgroup_flush_stats,
  once MEMCG_CHARGE_BATCH updates per CPU were pending): as good as exact, 0 here. Since "memcg: use
  ratelimited stats flush in the reclaim" (Shakeel Butt, v2 of August 2024, merged for 6.12) reclaim calls
  mem_cgroup_flush_stats_ratelimited, which flushes only when the periodic flusher (mm/memcontrol.c
  flush_memcg_stats_dwork, every FLUSH_TIME = 2 s) is a whole cycle late: the statistics are up to 2 s old,
  2000 here (``mmnsim.lru.lru_stats``). kernel=6.1 stands for 6.1 and 6.6 there; 6.12 behaves as 6.x.
  2.6.27 read exact zone counters (one LRU for anonymous and file pages until 2.6.28's split LRU): 0.

Disk swap (milliseconds per I/O) is a cost, set by ``conf/kernel/2008.yaml`` in ``costs``, with
``costs.swap_serial``: one disk serves one read at a time, so a client's swap-ins queue for it instead of
being spread over its vCPUs (``mmnsim.simulation`` ``_account``); today's zram decompresses in the faulting
CPU's own stream (drivers/block/zram/zcomp.h: ``struct zcomp`` holds a ``__percpu`` stream per CPU) and does
not.

Between 6.1 and 6.x nothing else the model represents differs (interval notifiers, start/end
invalidations, EPT accessed bits, the per-range fault retry, the OOM reaper, THP, compaction and NUMA
balancing with today's defaults are all older than 6.1). What changed between them that the model does
not represent: batched TLB flushes in migrate_pages (6.3, "migrate_pages(): batch TLB flushing"); per-VMA
NUMA scanning (6.4, commit fc137c0ddab2: only VMAs the task touched are scanned); multi-size THP (6.8);
the removal of ``change_pte`` (6.9; ``examples/ksm`` keeps it as an option); lockless KVM aging
(KVM_MMU_LOCKLESS_AGING, 2025). Neither kernel's MGLRU (CONFIG_LRU_GEN, merged in 6.1: aging by page-table
walks, mm/vmscan.c walk_mm) is modelled: both age through the classic LRU's rmap (folio_referenced).
"""

from dataclasses import dataclass

from .config import require


@dataclass
class KernelConfig:
    name: str  # "6.x", "6.1" or "2008": for the results table
    interval_notifiers: bool  # mmu_interval_notifier exists (5.5+); else RDMA ODP and GPU SVM pin
    invalidate_page: bool  # reclaim and migration invalidate per page with invalidate_page (before 4.13)
    young_flush: bool  # KVM's clear_flush_young flushes remote TLBs whenever a spte was young (to 6.12)
    ept_accessed_bits: bool  # EPT aging sees accessed bits; false: kvm_age_rmapp always answers "old"
    retry_whole_vm: bool  # a KVM fault retries while any invalidation is in progress (before the gfn range)
    oom_reaper: bool  # an OOM victim's memory is torn down by the reaper (4.6+), not only by its exit
    thp: bool  # transparent huge pages, khugepaged and MADV_HUGEPAGE (2.6.38+)
    compaction: bool  # memory compaction (2.6.35+)
    numa_balancing: bool  # automatic NUMA balancing (3.8+)
    spte_prefetch: bool  # KVM's shadow MMU maps up to 8 present neighbours per fault (2.6.36+)
    lru_stats_flush_ms: int  # reclaim reads LRU statistics flushed this often (6.12+: 2000); 0: exact

    def __post_init__(self) -> None:
        require(self.lru_stats_flush_ms >= 0, "lru_stats_flush_ms must be >= 0 (0: exact statistics), got "
                f"{self.lru_stats_flush_ms}")  # fmt: skip


# The features a config may ask for, with the release that brought each (for the error naming them).
FEATURES = {
    "thp": "transparent huge pages and khugepaged (2.6.38)",
    "compaction": "memory compaction (2.6.35)",
    "numa_balancing": "automatic NUMA balancing (3.8)",
}


def missing_features(kernel: KernelConfig, features: tuple[str, ...]) -> list[str]:
    """Of ``features`` (keys of ``FEATURES``), those ``kernel`` lacks, described with their release."""
    return [FEATURES[f] for f in features if not getattr(kernel, f)]


TODAY = KernelConfig("6.x", interval_notifiers=True, invalidate_page=False, young_flush=False,
                     ept_accessed_bits=True, retry_whole_vm=False, oom_reaper=True, thp=True, compaction=True,
                     numa_balancing=True, spte_prefetch=True, lru_stats_flush_ms=2000)  # fmt: skip
