"""The event counters the numba kernels increment, named after the kernel's own counters where one exists.

The kernels index one int64 array with the constants below (numba freezes module globals at compile
time, so they are plain ints). ``NAMES[i]`` is the metric name of index ``i``. Each is declared, with
its unit and meaning, in ``mmnsim.metrics`` (the comments here are reminders).
"""

import numpy as np

NAMES = (
    "accesses",  # client accesses completed (hits and faulted-in alike)
    "writes",
    "secondary_faults",  # misses in a secondary MMU's table, resolved through the primary table
    "minor_faults",  # primary faults that needed no I/O (first touch of anonymous memory)
    "major_faults",  # primary faults that read the page from swap
    "swap_ins",
    "swap_outs",  # pswpout
    "fault_retries",  # secondary faults discarded because an invalidation ran meanwhile
    "pins_acquired",  # nr_foll_pin_acquired
    "pins_released",  # nr_foll_pin_released
    "alloc_failures",  # allocations that failed after reclaim (the access could not proceed)
    "oom_events",  # out_of_memory() invocations: allocations that failed after reclaim made no progress
    "access_errors",  # accesses refused: no VMA, or the VMA forbids the access (SIGSEGV / -EFAULT)
    "isolation_violations",  # a client read or wrote a frame that is free or belongs to another mm
    "coherence_violations",  # a client used a translation the primary table no longer agrees with
    "remote_accesses",  # accesses served by a frame on another NUMA node than the accessor's
    "numa_hint_faults",  # faults on PROT_NONE hinting entries
    "numa_hint_faults_local",  # of which the page was on the faulting CPU's node
    "access_distance",  # sum over accesses of the SLIT distance from accessor to frame (10 = local)
    "pgscan",  # frames examined by reclaim
    "pin_skipped",  # reclaim candidates skipped because they are pinned
    "invalidations",  # ranges delivered to a non-empty notifier chain by invalidate_range_start
    "thp_fault_alloc",  # transparent huge pages allocated at fault time
    "thp_split",  # THPs split back into 4 KiB mappings
    "thp_collapse_alloc",  # THPs khugepaged built
    "compact_success",  # pageblocks compaction emptied
    "compact_fail",  # pageblocks compaction could not empty because a page in them is pinned
    "huge_accesses",  # accesses through a 2 MiB mapping (a THP's PMD, or a huge secondary entry)
    "pages_migrated",  # pgmigrate_success
    "migrations_refused",  # pgmigrate_fail: pinned, or no free frame on the target node
    "kswapd_wakeups",
    "direct_reclaims",  # allocstall
    "cow_ksm",  # copies made by a write (or a long-term pin) to a shared KSM page
    "invalidations_refused",  # non-blockable batches a subscriber refused (-EAGAIN): the operation was not done
    "swap_write_errors",  # swap-outs whose write failed: the page stayed resident, its slot was released
    "swap_read_errors",  # swap-ins whose read failed: the access failed (a guest memory error), the page stays in swap
    # Ranges delivered by invalidate_range_start (and interval invalidate), by event (enum mmu_notifier_event
    # order, as notifier.Event): which kernel paths invalidated, e.g. no MIGRATE without device memory.
    "invalidations_unmap",
    "invalidations_clear",
    "invalidations_protection_vma",
    "invalidations_protection_page",
    "invalidations_soft_dirty",
    "invalidations_release",
    "invalidations_migrate",
    "invalidations_exclusive",
    "oom_kills",  # oom_kill: tenants the OOM killer killed (mm/oom_kill.c oom_kill_process)
    "oom_reaper_refusals",  # OOM-reaper ranges a subscriber refused (non-blockable): skipped, retried later
    "oom_reaped_pages",  # pages (present or swapped) the OOM reaper tore down (__oom_reap_task_mm)
    "invalidate_page_calls",  # pages told with 2.6.27's invalidate_page op (kernel=2008; also in invalidations)
    # With engine.check_accesses, accesses through a secondary entry whose frame no longer holds the page
    # (the unsafe unpinned mode; a buggy plugin): reads of freed or reused memory, writes to such frames,
    # and of those the writes into a frame holding another tenant's page.
    "stale_reads",
    "stale_writes",
    "foreign_writes",
    "compact_stall",  # direct compactions run by a THP fault (mm/page_alloc.c __alloc_pages_direct_compact)
    "thp_fault_fallback",  # THP faults that fell back to a 4 KiB page: no free pageblock, even after compaction
    "race_windows",  # secondary faults that slept between resolving and installing while the host ran
    "write_seq",  # content-token generator: bumped on every write
    "accesses_attempted",  # client accesses issued, completed or not (counted per batch, in Python)
    "oom_ticks",  # ticks in which oom_events grew
    "thp_swpout",  # THPs reclaim wrote to swap whole, into a free swap cluster (THP_SWPOUT)
    "thp_swpout_fallback",  # old THPs reclaim split to swap out as 4 KiB pages: no free cluster (THP_SWPOUT_FALLBACK)
    "secondary_prefetched",  # entries a secondary fault mapped beside its own (KVM shadow MMU: FNAME(pte_prefetch))
)

(
    ACCESSES,
    WRITES,
    SECONDARY_FAULTS,
    MINOR_FAULTS,
    MAJOR_FAULTS,
    SWAP_INS,
    SWAP_OUTS,
    FAULT_RETRIES,
    PINS_ACQUIRED,
    PINS_RELEASED,
    ALLOC_FAILURES,
    OOM_EVENTS,
    ACCESS_ERRORS,
    ISOLATION_VIOLATIONS,
    COHERENCE_VIOLATIONS,
    REMOTE_ACCESSES,
    NUMA_HINT_FAULTS,
    NUMA_HINT_FAULTS_LOCAL,
    ACCESS_DISTANCE,
    PGSCAN,
    PIN_SKIPPED,
    INVALIDATIONS,
    THP_FAULT_ALLOC,
    THP_SPLIT,
    THP_COLLAPSE_ALLOC,
    COMPACT_SUCCESS,
    COMPACT_FAIL,
    HUGE_ACCESSES,
    PAGES_MIGRATED,
    MIGRATIONS_REFUSED,
    KSWAPD_WAKEUPS,
    DIRECT_RECLAIMS,
    COW_KSM,
    INVALIDATIONS_REFUSED,
    SWAP_WRITE_ERRORS,
    SWAP_READ_ERRORS,
    INVALIDATIONS_BY_EVENT,  # + notifier.Event value
    _INVALIDATIONS_CLEAR,
    _INVALIDATIONS_PROTECTION_VMA,
    _INVALIDATIONS_PROTECTION_PAGE,
    _INVALIDATIONS_SOFT_DIRTY,
    _INVALIDATIONS_RELEASE,
    _INVALIDATIONS_MIGRATE,
    _INVALIDATIONS_EXCLUSIVE,
    OOM_KILLS,
    OOM_REAPER_REFUSALS,
    OOM_REAPED_PAGES,
    INVALIDATE_PAGE_CALLS,
    STALE_READS,
    STALE_WRITES,
    FOREIGN_WRITES,
    COMPACT_STALL,
    THP_FAULT_FALLBACK,
    RACE_WINDOWS,
    WRITE_SEQ,
    ACCESSES_ATTEMPTED,
    OOM_TICKS,
    THP_SWPOUT,
    THP_SWPOUT_FALLBACK,
    SECONDARY_PREFETCHED,
) = range(len(NAMES))


def new_counters() -> np.ndarray:
    return np.zeros(len(NAMES), dtype=np.int64)


def as_dict(counters: np.ndarray) -> dict[str, int]:
    """Counter values by name, without the internal token generator."""
    return {name: int(v) for name, v in zip(NAMES, counters, strict=True) if name != "write_seq"}
