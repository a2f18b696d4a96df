"""Two-list reclaim: the inactive and the active anonymous LRU, after mm/vmscan.c (classic LRU, no MGLRU).

* ``lru_sizes``: the pages on each list now (lruvec_lru_size, exact under the LRU lock: what get_scan_count
  scales its scan by) and the refaults activated so far. ``lru_stats``: the same as reclaim's heuristics read
  them, from the memory cgroup's statistics (lruvec_page_state NR_INACTIVE_ANON, NR_ACTIVE_ANON,
  WORKINGSET_ACTIVATE_ANON) as of their last flush, up to ``kernel.lru_stats_flush_ms`` old.
  ``inactive_is_low`` (mm/vmscan.c inactive_is_low: inactive * inactive_ratio < active, the ratio
  int_sqrt(10 * size in GiB), 1 below 1 GiB) and ``may_deactivate`` (prepare_scan_control: refaults
  activated since the last reclaim, or the inactive list low) take the statistics.
* ``shrink_active``: deactivate folios from the active list's tail (mm/vmscan.c shrink_active_list). It asks
  folio_referenced, so the young ops reach the secondary MMUs, but an anonymous folio is deactivated whether
  referenced or not (only a referenced executable file folio rotates, and the model has no file pages).
* ``shrink_inactive``: isolate folios from the inactive list's tail (shrink_inactive_list ->
  isolate_lru_folios) and sort them as shrink_folio_list -> folio_check_references does: referenced (the PTE's
  young bit or a subscriber's young op) and PG_referenced already set -> activate; referenced the first time ->
  set PG_referenced and keep (back to the inactive list's head); not referenced -> reclaim. Only the isolated
  folios are aged. A pinned folio (a long-term pin: VFIO, a pinning KVM) is activated where the hand meets it
  on the inactive list, without being aged: the kernel ages it, tries to unmap it, fails (try_to_unmap_one:
  folio_try_share_anon_rmap_pte refuses a maybe-pinned folio) and activates it (shrink_folio_list:
  activate_locked); it comes back with the active list's deactivation.

The lists are the frames' LRU flags (``FrameTable.ref``: LRU_ACTIVE, LRU_REFERENCED, a THP's on its first frame),
framework state no plugin can write (plugins read ``host.ft`` as read-only views; these operations change it).
A new folio starts inactive and unreferenced (since 5.9, commit b518154e59aa: folio_add_lru); a swapped-in page
whose refault distance is within the workingset starts active (mm/workingset.c workingset_refault, in the access
kernel: ``swapdev.workingset_refault``), against the active list's size in the statistics (``lru_stats``).

A KVM fault marks the page it maps accessed (``access._kvm_mark_accessed``): 6.18's kvm_release_faultin_page ->
kvm_release_page_clean (virt/kvm/kvm_main.c) calls kvm_set_page_accessed -> mark_page_accessed, and for a page
not yet resident hva_to_pfn_slow's get_user_pages_unlocked adds FOLL_TOUCH (mm/gup.c follow_page_pte ->
folio_mark_accessed): twice, so a page KVM faults in starts active.

Simplifications: each list's order is the frames' order, from a hand per list (a CLOCK over the frames of the
list): a folio rotated or deactivated is met again when its list's hand comes round, not strictly after every
folio then on the list. Deactivation, when reclaim may deactivate, takes folios in proportion to the lists'
sizes each round (get_scan_count's proportional scan, without its priorities). The statistics are flushed at
the first read after the flush is due (the kernel's flusher folds them at its own time: what changed in
between is seen early), and a refault is measured against the workingset size the last read published (the
kernel reads it at the refault). One lruvec for all nodes and tenants (the memory cgroup's, under
``host.memcg``). No PG_workingset (the "was active before eviction" restore accounting).
"""

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .arguments import OperationError, count_arg, page_arg
from .frames import LRU_ACTIVE, LRU_REFERENCED, PAGEBLOCK_SHIFT, is_device_frame
from .kernel import kernel
from .pagebits import HUGE_PAGES, P_HUGE
from .reclaim import _scan, referenced
from .swapdev import REG_NONRESIDENT_AGE, REG_USED, REG_WORKINGSET, REG_WORKINGSET_ACTIVATE

if TYPE_CHECKING:
    from .simulation import Simulation

CLEARING_OPS = ("clear_flush_young", "clear_young")  # the young ops that age (test-and-clear)
SWAP_CLUSTER_MAX = 32  # folios isolated per batch (mm/vmscan.c isolate_lru_folios' nr_to_scan per call)


class LruSizes(NamedTuple):
    inactive: int  # pages on the inactive anonymous list
    active: int  # pages on the active anonymous list
    refaults_activated: int  # refaults activated so far (WORKINGSET_ACTIVATE_ANON): ``may_deactivate`` compares


@kernel
def _sizes(fkey, pb, node_order, pflags, fref):
    inactive = 0
    active = 0
    for f in range(fkey.size):
        k = fkey[f]
        if k < 0 or is_device_frame(pb, node_order, f):  # free, shared, orphaned, or on no LRU
            continue
        head = f
        if pflags[k] & P_HUGE:  # a THP's flags are its first frame's
            head = (f >> PAGEBLOCK_SHIFT) << PAGEBLOCK_SHIFT
        if fref[head] & LRU_ACTIVE:
            active += 1
        else:
            inactive += 1
    return inactive, active


def lru_sizes(sim: "Simulation") -> LruSizes:
    """The pages on the inactive and the active list now (a THP counts its 512), and the refaults activated so
    far: what the lists hold (lruvec_lru_size, kept exact under the LRU lock; get_scan_count scales its scan by
    it). One compiled pass over the frames: a policy counts once per reclaim call and keeps the counts up to date
    from what its rounds did. For reclaim's heuristics, ``lru_stats``."""
    ft, sw = sim.host._ft, sim.host._sw
    inactive, active = _sizes(ft.key, ft.pb, ft.node_order, sim.host._pt.flags, ft.ref)
    return LruSizes(int(inactive), int(active), int(sw.reg[REG_WORKINGSET_ACTIVATE]))


def lru_stats(sim: "Simulation") -> LruSizes:
    """The lists' sizes and the refaults activated as reclaim's heuristics read them: the memory cgroup's
    statistics (lruvec_page_state; global reclaim reads the root cgroup's), which inactive_is_low and
    prepare_scan_control's refault test (``may_deactivate``) take, and workingset_test_recent the workingset
    size from. The kernel folds them from per-CPU counters only when they are flushed: since 6.12 every
    FLUSH_TIME = 2 s by the periodic flusher (mm/memcontrol.c flush_memcg_stats_dwork), reclaim itself flushing
    only when that flusher is a whole cycle late (mm/vmscan.c prepare_scan_control ->
    mem_cgroup_flush_stats_ratelimited). ``kernel.lru_stats_flush_ms`` is that period (0: flushed at every read,
    as 6.1's reclaim did); the flusher's phase against the run is drawn from the seed. Before the first flush the
    statistics are a new cgroup's: zero. So a guest whose boot fills its limit before a flush meets "no pages
    active", and reclaim deactivates nothing (docs/validation.md, row 27). Global reclaim (no ``host.memcg``)
    reads the root cgroup's, from the same flusher: modelled alike (zero before the first flush, the tenants
    starting with the run), and not checked on the real twin, which runs under a cgroup.

    Each read also publishes the statistics' active list as the workingset size a refault is measured against
    (workingset_test_recent: for an anonymous refault NR_ACTIVE_FILE + NR_INACTIVE_FILE, none here, plus
    NR_ACTIVE_ANON while swap has a free slot, mem_cgroup_get_nr_swap_pages > 0). Until a two-list policy
    first reads them, no refault is activated."""
    host = sim.host
    period = sim.kernel.lru_stats_flush_ms * 1e6
    epoch = int(np.floor(sim.now_ns() / period - host._stats_phase)) if period else host._stats_epoch + 1
    if epoch > host._stats_epoch:  # a flush since the last read: the statistics as the lists are now
        host._stats_epoch = epoch
        flush_lru_stats(sim)
    inactive, active, activated = (int(x) for x in host._lru_stats)
    sw = host._sw
    sw.reg[REG_WORKINGSET] = active if sw.reg[REG_USED] < sw.key.size else 0
    return LruSizes(inactive, active, activated)


def flush_lru_stats(sim: "Simulation") -> None:
    """Fold the statistics now, off the periodic flusher's clock: what a read of the cgroup's memory.stat does
    (mm/memcontrol-v1.c memcg1_stat_format -> mem_cgroup_flush_stats; ``host.read_stats_each_tick``)."""
    sim.host._lru_stats[:] = lru_sizes(sim)


def may_deactivate(inactive: int, active: int, refaulted: bool) -> bool:
    """mm/vmscan.c prepare_scan_count: reclaim deactivates from the active anonymous list when refaults were
    activated since the last reclaim took its snapshot (snapshot_refaults: "a new workingset is being
    established") or the inactive list is low."""
    inactive = count_arg(inactive, "may_deactivate", "inactive")
    active = count_arg(active, "may_deactivate", "active")
    if not isinstance(refaulted, bool | np.bool_):
        raise OperationError(f"may_deactivate: refaulted must be a bool, got {refaulted!r}")
    return bool(refaulted) or inactive_is_low(inactive, active)


def inactive_is_low(inactive: int, active: int) -> bool:
    """mm/vmscan.c inactive_is_low: the inactive list is too small beside the active one, so shrink_lruvec (and
    shrink_list, through sc->may_deactivate) deactivates from the active list first."""
    inactive = count_arg(inactive, "inactive_is_low", "inactive")
    active = count_arg(active, "inactive_is_low", "active")
    gib = (inactive + active) >> 18  # pages >> (30 - PAGE_SHIFT)
    ratio = int(np.sqrt(10 * gib)) if gib else 1  # int_sqrt(10 * gb)
    return inactive * ratio < active


def _isolate(sim: "Simulation", lru: int, hand: int, want: int, limit: int, op: str,
             name: str) -> tuple[np.ndarray, int, int, int]:  # fmt: skip
    if op not in CLEARING_OPS:
        raise OperationError(f"{name}: young op {op!r} does not age; accepted: {', '.join(CLEARING_OPS)}")
    ft = sim.host._ft
    hand = page_arg(hand, ft.key.size, name, "hand")
    want = min(count_arg(want, name, "want"), ft.key.size)
    limit = min(count_arg(limit, name, "limit"), ft.key.size)
    out = np.empty(want, dtype=np.int64)
    found, hand, passed, taken = _scan(ft.key, ft.pin, ft.pb, ft.node_order, sim.host._pt.flags, ft.ref, lru,
                                       sim.host._ctr, hand, want, limit, out)  # fmt: skip
    return out[:found], int(hand), int(passed), int(taken)


class Shrunk(NamedTuple):
    """What one batch of ``shrink_active`` or ``shrink_inactive`` did."""

    hand: int  # the list's hand, for the next batch
    passed: int  # frames the hand passed (a bound on the work, as ``scan_frames``'s limit)
    scanned: int  # pages of the list's folios met, pinned ones too (nr_scanned): reclaim's own CPU work
    moved: int  # pages deactivated (shrink_active) or activated (shrink_inactive)
    reclaim: np.ndarray  # shrink_inactive: the folios found old, for ``swap_out`` (a THP as its first frame)


def shrink_active(sim: "Simulation", hand: int, want: int, limit: int, op: str = "clear_flush_young") -> Shrunk:
    """Deactivate up to ``want`` folios of the active list from ``hand`` on, passing no more than ``limit`` frames
    (mm/vmscan.c shrink_active_list): each is asked ``referenced`` (the young ops reach the notifiers, clearing
    the bits), then moved to the inactive list whatever the answer, as an anonymous folio is."""
    frames, hand, passed, taken = _isolate(sim, 1, hand, want, limit, op, "shrink_active")
    referenced(sim, frames, op)
    ft = sim.host._ft
    ft.ref[frames] &= np.uint8(0xFF ^ LRU_ACTIVE)
    huge = (sim.host._pt.flags[ft.key[frames]] & P_HUGE) != 0  # pinned folios too: deactivated as any other
    moved = int(np.where(huge, HUGE_PAGES, 1).sum())
    return Shrunk(hand, passed, taken, moved, frames[:0])


@kernel
def _check_references(frames, young, fkey, pflags, fref, sreg, old):
    """folio_check_references over the isolated folios; marks ``old`` (reclaim) and returns the pages activated,
    which advance the workingset clock (move_folios_to_lru: workingset_age_nonresident for an active folio)."""
    activated = 0
    for i in range(frames.size):
        f = frames[i]
        was = (fref[f] & LRU_REFERENCED) != 0  # folio_test_clear_referenced
        fref[f] &= ~LRU_REFERENCED
        old[i] = False
        if young[i]:
            fref[f] |= LRU_REFERENCED  # folio_set_referenced
            if was:  # FOLIOREF_ACTIVATE
                fref[f] |= LRU_ACTIVE
                k = fkey[f]
                activated += HUGE_PAGES if k >= 0 and pflags[k] & P_HUGE else 1
            # else FOLIOREF_KEEP: back to the inactive list
        else:
            old[i] = True  # FOLIOREF_RECLAIM
    sreg[REG_NONRESIDENT_AGE] += activated
    return activated


def shrink_inactive(sim: "Simulation", hand: int, want: int, limit: int, op: str = "clear_flush_young") -> Shrunk:
    """Isolate up to ``want`` folios of the inactive list from ``hand`` on, passing no more than ``limit`` frames,
    and sort them (mm/vmscan.c shrink_folio_list, folio_check_references): referenced twice -> active, referenced
    once -> PG_referenced and kept, not referenced -> returned in ``reclaim`` for the caller to ``swap_out``."""
    frames, hand, passed, taken = _isolate(sim, 0, hand, want, limit, op, "shrink_inactive")
    young = referenced(sim, frames, op)
    old = np.empty(frames.size, dtype=bool)
    host = sim.host
    moved = _check_references(frames, young, host._ft.key, host._pt.flags, host._ft.ref, host._sw.reg, old)
    return Shrunk(hand, passed, taken, int(moved), frames[old])
