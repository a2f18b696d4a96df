"""Which kernel is simulated: today's (``kernel=6.x``, the default) or the first one with mmu notifiers
(``kernel=2008``: 2.6.25 to 2.6.27, the kernel of the 2008 thread). ``conf/kernel/*.yaml`` set these keys.

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
* ``young_flush``: 2.6.27's kvm_mmu_notifier_clear_flush_young (virt/kvm/kvm_main.c) flushed the remote
  TLBs whenever kvm_age_hva found a young spte; today's x86 KVM elides that flush.
* ``ept_accessed_bits``: 2.6.27's kvm_age_rmapp (arch/x86/kvm/mmu.c) "always return old for EPT"
  (shadow_accessed_mask is 0 under EPT): an EPT guest's accesses are invisible to reclaim. Later kernels
  emulated the bit by zapping the EPT entry when aging (kvm_age_rmapp: "emulate the accessed bit for
  EPT"), then read the EPT accessed bits of processors that have them.
* ``retry_whole_vm``: 2.6.27's mmu_notifier_retry (include/linux/kvm_host.h) made a KVM fault retry while
  any invalidation was in progress anywhere in the VM (mmu_notifier_count); today's
  mmu_invalidate_retry_gfn retries only a fault inside the range being invalidated.

* ``oom_reaper``: the OOM reaper came in 4.6 (2016, mm/oom_kill.c oom_reaper); before it an OOM victim's
  memory was freed only by its own exit (exit_mmap: mmu_notifier_release, then the unmap), so no
  non-blockable invalidation is ever raised.

Disk swap (milliseconds per I/O) is a cost, set by ``conf/kernel/2008.yaml`` in ``costs``.
"""

from dataclasses import dataclass


@dataclass
class KernelConfig:
    name: str  # "6.x" or "2008": for the results table
    interval_notifiers: bool  # mmu_interval_notifier exists (5.5+); else RDMA ODP and GPU SVM pin
    invalidate_page: bool  # reclaim and migration invalidate per page with invalidate_page (before 4.13)
    young_flush: bool  # KVM's clear_flush_young flushes remote TLBs whenever a spte was young (2.6.27)
    ept_accessed_bits: bool  # EPT aging sees accessed bits; false: kvm_age_rmapp always answers "old"
    retry_whole_vm: bool  # a KVM fault retries while any invalidation is in progress (before the gfn range)
    oom_reaper: bool  # an OOM victim's memory is torn down by the reaper (4.6+), not only by its exit


TODAY = KernelConfig("6.x", interval_notifiers=True, invalidate_page=False, young_flush=False,
                     ept_accessed_bits=True, retry_whole_vm=False, oom_reaper=True)  # fmt: skip
