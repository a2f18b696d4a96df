"""Swap: reclaim anonymous memory to the swap device when free memory runs low.

Two modes:

* ``lru`` (default), an LRU approximation in batches, with ``lists``:

  - ``2``, the kernel's active/inactive anonymous LRU (mm/vmscan.c, classic LRU, no MGLRU; ``mmnsim.lru``; the
    one docs/validation.md checks against the kernel, not yet the default: README). Each round, when reclaim
    may deactivate (refaults were activated since the last reclaim, or the inactive list is low beside the
    active one: prepare_scan_control, inactive_is_low, both read from the statistics as of their last flush,
    ``lru_stats``), folios are deactivated from the active list's tail in proportion to the lists' sizes
    (shrink_active_list: their young bits are asked and cleared, anonymous ones move whatever the answer).
    Then SWAP_CLUSTER_MAX folios are isolated from the inactive list's tail and only they are aged
    (shrink_folio_list, folio_check_references): referenced with PG_referenced set -> activated; referenced
    the first time -> PG_referenced and kept; not referenced -> swapped out, their secondary translations
    invalidated first. New folios start inactive; a page KVM faults in starts active (KVM marks it accessed);
    a swapped-in page whose refault distance is within the statistics' active list starts active
    (mm/workingset.c workingset_refault).
  - ``1`` (default), one list with second chance (the model before the two lists): a hand sweeps the frames (pinned ones
    are skipped, as reclaim gives up on maybe-pinned pages); each candidate is tested for recent use
    through its PTE's young bit and every subscribed secondary MMU's ``clear_flush_young`` (or
    ``clear_young``); pages found young get a second chance, the rest are swapped out. It ages every
    candidate the hand passes.

  kswapd runs when an allocation finds a node below its low watermark and reclaims up to the high one;
  direct reclaim runs when the allocation reaches the min watermark (under ``host.memcg``, the memory
  cgroup's limit: direct reclaim in the charging thread, no kswapd). Both call this policy.
* ``clock``, the exact textbook CLOCK (one list, one reference bit, second chance): every allocation that
  finds no free frame evicts exactly one page, chosen by the hand (see ``mmnsim.access``). Its fault
  counts equal the textbook algorithm's on any trace. Watermarks, kswapd and ``lists`` play no part.

Its own CPU work is charged with ``charge_reclaim``: ``costs.reclaim_scan_ns`` per page scanned (with two lists,
the pages isolated from either list; with one, every frame the hand passes) and ``costs.swap_out_ns`` per page
written (KVM charges its aging and zaps itself, inside the notifier calls).

Simplification: one LRU for all nodes, no swap cache; with two lists, each list's order is the frame order
from a hand per list (a rotated or deactivated folio is met when that hand comes round; ``mmnsim.lru``).
"""

from dataclasses import dataclass
from enum import StrEnum

from mmnsim import (
    HostPolicy,
    charge_reclaim,
    hookimpl,
    lru_sizes,
    lru_stats,
    may_deactivate,
    require,
    shrink_active,
    shrink_batch,
    shrink_inactive,
    swap_out,
)

SWAP_CLUSTER_MAX = 32  # folios isolated from a list per batch (mm/vmscan.c isolate_lru_folios)


class ReclaimMode(StrEnum):
    lru = "lru"
    clock = "clock"


class YoungOp(StrEnum):
    clear_flush_young = "clear_flush_young"
    clear_young = "clear_young"


@dataclass
class SwapConfig:
    mode: ReclaimMode
    young_op: YoungOp  # how reclaim asks secondary MMUs whether a page was used
    batch: int  # fewest candidates examined per round of the lru mode with one list
    passes: float  # how many sweeps over memory one reclaim call may make before giving up
    lists: int = 1  # lru mode: 1, one list with second chance; 2, the active/inactive LRU

    def __post_init__(self) -> None:
        require(self.lists in (1, 2), f"lists must be 1 (one list) or 2 (active and inactive), got {self.lists}")
        require(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        require(self.passes > 0, f"passes must be > 0, got {self.passes}")


class Swap(HostPolicy):
    name = "swap"
    Config = SwapConfig

    def __init__(self, sim, cfg: SwapConfig):
        super().__init__(sim, cfg)
        self.hand = 0  # with two lists, the inactive list's hand
        self.active_hand = 0
        self.refaults = 0  # refaults activated when the last reclaim ended (lruvec->refaults, snapshot_refaults)
        if cfg.mode is ReclaimMode.clock:
            sim.use_exact_clock()
        elif cfg.lists == 2:
            sim.use_lru_lists()

    @hookimpl
    def reclaim(self, sim, nr_pages: int, direct: bool) -> int | None:
        if self.cfg.mode is ReclaimMode.clock:
            return None
        if self.cfg.lists == 2:
            return self._shrink_lists(sim, nr_pages)
        limit = int(self.cfg.passes * sim.host.nframes)
        freed = scanned = 0
        while freed < nr_pages and scanned < limit:
            # Look at a few candidates per page still wanted: most of a hot set turns out young. Of those
            # found, the old ones go to swap until the pages still wanted (a THP is 512 of them:
            # shrink_folio_list counts pages): scan_frames, referenced and swap_out, in one call.
            want = min(max(self.cfg.batch, 4 * (nr_pages - freed)), limit - scanned)
            batch = shrink_batch(sim, self.hand, want, limit - scanned, nr_pages - freed, self.cfg.young_op.value)
            self.hand = batch.hand
            scanned += batch.looked
            if batch.found == 0:
                break
            freed += batch.freed
            charge_reclaim(sim, batch.looked, batch.freed)
            if batch.freed < batch.offered and sim.host.swap_used() == sim.host.sw.key.size:
                break  # swap is full
        return freed

    def _shrink_lists(self, sim, nr_pages: int) -> int:
        """shrink_lruvec, simplified: rounds of (deactivate from the active list when reclaim may, then one batch of
        the inactive list) until ``nr_pages`` are freed, or the hands have passed ``passes`` times the frames.
        Whether it may deactivate is decided once, from the statistics (prepare_scan_control; ``lru_stats``, up
        to 2 s old), how much from the lists as they are (get_scan_count; ``lru_sizes``). If that fell short
        while the active list was left alone, once more with deactivation forced (do_try_to_free_pages:
        ``skipped_deactivate`` -> ``force_deactivate``, as when the inactive list holds only pinned folios that
        shrink_folio_list keeps)."""
        inactive, active, _ = lru_sizes(sim)
        stats = lru_stats(sim)
        refaulted = stats.refaults_activated != self.refaults  # since the last reclaim (snapshot_refaults)
        self.refaults = stats.refaults_activated
        deactivate = may_deactivate(stats.inactive, stats.active, refaulted)
        freed, skipped = self._rounds(sim, nr_pages, inactive, active, deactivate)
        if freed < nr_pages and skipped:
            inactive, active, _ = lru_sizes(sim)
            freed += self._rounds(sim, nr_pages - freed, inactive, active, True)[0]
        return freed

    def _rounds(self, sim, nr_pages: int, inactive: int, active: int, deactivate: bool) -> tuple[int, bool]:
        """The rounds of ``_shrink_lists``; returns the pages freed and whether deactivation was ever skipped."""
        op = self.cfg.young_op.value
        limit = int(self.cfg.passes * sim.host.nframes)
        freed = passed = 0
        skipped = False  # the counts are kept current below from what each batch did
        while freed < nr_pages and passed < limit:
            scanned = 0
            # shrink_lruvec's loop reaches the active list (shrink_list, which notes the skip) only while the
            # inactive list has folios to scan: its condition is nr[LRU_INACTIVE_ANON], no file pages here.
            skipped |= active > 0 and inactive > 0 and not deactivate
            if active > 0 and deactivate:
                # get_scan_count scans the lists in proportion to their sizes (SCAN_EQUAL at one priority)
                want = min(-(-SWAP_CLUSTER_MAX * active // max(inactive, 1)), 8 * SWAP_CLUSTER_MAX)
                done = shrink_active(sim, self.active_hand, want, limit - passed, op)
                self.active_hand = done.hand
                passed += done.passed
                scanned += done.scanned
                inactive, active = inactive + done.moved, active - done.moved
            done = shrink_inactive(sim, self.hand, SWAP_CLUSTER_MAX, max(limit - passed, 1), op)
            self.hand = done.hand
            passed += done.passed
            scanned += done.scanned
            inactive, active = inactive - done.moved, active + done.moved
            got = swap_out(sim, done.reclaim)
            freed += got
            inactive = max(inactive - got, 0)  # (estimates between counts: never below empty)
            active = max(active, 0)
            charge_reclaim(sim, scanned, got)
            if scanned == 0:
                break  # nothing on either list to take
            if got < done.reclaim.size and sim.host.swap_used() == sim.host.sw.key.size:
                break  # swap is full
        return freed, skipped


@hookimpl
def register_components():
    return [Swap]
