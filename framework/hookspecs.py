"""The hook specification: what the framework calls, and what a plugin promises when it answers.

Two sets of hooks, as in the kernel:

``NotifierOps`` mirrors ``struct mmu_notifier_ops`` (include/linux/mmu_notifier.h). Each mm has its own
notifier chain; a secondary MMU in notifier mode subscribes to the chain of the mm it maps, and only the
subscribers of that mm are called. Every call carries a *batch*: ``start``/``end`` are int64 arrays of page
numbers inside the mm, one element per range, ranges half-open ``[start, end)``. Where the kernel would
call the op once per range, the framework calls it once per batch; costs are still charged per range
(one remote TLB flush per range that zapped anything, for example).

``FrameworkHooks`` are per simulation, not per mm: registering components, running host policies on each
tick, reclaiming memory on demand and collecting metrics.

Pages, frames and flags are described in ``mmnsim.pagebits``; the ``Event`` values and ``NotifierRange`` in
``mmnsim.notifier``.
"""

import pluggy

PROJECT = "mmnsim"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class NotifierOps:
    """``struct mmu_notifier_ops``: the calls a subscribed secondary MMU receives from its mm."""

    @hookspec
    def invalidate_range_start(self, ranges):
        """The pages in ``ranges`` are about to lose their primary mapping, or change protection.

        ``ranges`` is a ``NotifierRange``: a batch of ranges of one mm with one event.

        Called while the primary PTEs still map the pages. From this call until the matching
        ``invalidate_range_end`` the subscriber must drop every translation it holds for the ranges
        (and flush its TLB) and must not establish a new one: the fault path has to see the invalidation
        and retry (KVM raises ``mmu_invalidate_in_progress``; ``SecondaryMMU.begin_invalidate`` does it).

        ``ranges.event`` says why (``Event.UNMAP``, ``CLEAR``, ``PROTECTION_VMA``, ...); ``ranges.owner`` is
        the device that caused a ``MIGRATE`` or ``EXCLUSIVE`` event, so its own driver may skip it.

        Return ``None`` (or True) when done. Only when ``ranges.blockable`` is False may a subscriber
        refuse by returning False (-EAGAIN): the caller then gives up on the whole batch and calls
        ``invalidate_range_end`` on every subscriber that implements it, so a subscriber that can
        refuse must not implement ``invalidate_range_end``. Refusing a blockable range is a bug the
        framework reports.

        Postcondition, checked the moment the call returns: a subscriber that accepted (blockable or
        not) maps no page of the ranges. An entry left, even one dropped later in the tick, is a
        ``coherence`` violation naming the subscriber and this op.
        """

    @hookspec
    def invalidate_range_end(self, ranges):
        """The invalidation begun by ``invalidate_range_start(ranges)`` is complete.

        Called after the primary PTEs were cleared and, for unmap and reclaim, after the pages were
        freed. The subscriber may let its fault path install translations again (KVM bumps
        ``mmu_invalidate_seq`` and lowers in_progress; ``SecondaryMMU.end_invalidate`` does it).
        """

    @hookspec
    def invalidate(self, ranges, cur_seq):
        """``mmu_interval_notifier_ops.invalidate``, for interval subscribers only.

        Called, before any whole-mm subscriber's ``invalidate_range_start``, with the part of ``ranges``
        that overlaps the subscriber's region (clipped to it), while the primary PTEs still map the pages.
        The subscriber must record ``cur_seq`` with ``set_seq(cur_seq)`` (mmu_interval_set_seq) before it
        drops its translations, so that a fault that read the sequence earlier retries
        (mmu_interval_read_retry); then zap and flush. There is no end call: the fault path's sequence
        check covers the window.

        ``ranges.event`` says why; an event whose ``ranges.owner`` is this device (its own MIGRATE or
        EXCLUSIVE) may be skipped. At mm teardown it comes with event RELEASE over the whole mm.

        Return True (or None). False only when ``ranges.blockable`` is False and the subscriber would have
        to sleep: the caller then gives up on the batch. As for ``invalidate_range_start``, a subscriber
        that accepted maps no page of its (clipped) ranges when it returns: checked at the return.
        """

    @hookspec
    def invalidate_page(self, mm, pages):
        """2.6.25 to 4.12: the primary PTE of each page in ``pages`` (an int64 array of pages of ``mm``) was
        just cleared; drop every translation of those pages, and flush, before returning.

        ``invalidate_page`` of 2.6.27's struct mmu_notifier_ops (include/linux/mmu_notifier.h): called by
        ptep_clear_flush_notify, once per page, from try_to_unmap_one (mm/rmap.c), that is by reclaim and
        page migration, with no ``invalidate_range_start``/``_end`` around it. "Before this is invoked any
        secondary MMU is still ok to read/write to the page previously pointed by the Linux pte because the
        old page hasn't been freed yet": the page is freed only after every subscriber has returned. There
        is no in-progress window, so a fault that resolved the page before the call must not install it
        after: the subscriber moves its sequence first (KVM's kvm_mmu_notifier_invalidate_page bumps
        mmu_notifier_seq under mmu_lock, unmaps the hva, then kvm_flush_remote_tlbs()).

        Delivered only under ``kernel=2008`` (``kernel.invalidate_page``), in place of the start/end batch
        those paths raise today; the framework calls it just before it updates the PTEs, with nothing run in
        between. A subscriber that does not implement it hears nothing from reclaim and migration, as with
        2.6.27's __mmu_notifier_invalidate_page, which skipped ops that did not set it (4.13, commit
        369ea8242c0f, replaced these calls with start/end and removed the op).
        """

    @hookspec
    def clear_flush_young(self, mm, start, end):
        """Test and clear the accessed bit of every translation in each range, flushing if needed.

        Reclaim calls this to age pages. Returns a bool array, one element per range: True when any
        translation in the range had been accessed since the last clear. Subscribers that cannot report
        accesses (RDMA, GPU) do not implement it, and their pages look cold to reclaim. With invariant
        checks on, the answer is compared with what the framework's access kernel saw through the
        subscriber's entries since they were last cleared (``SecondaryMMU.accessed``, which the plugin
        cannot write; ``harvest_accessed`` reads the plugin's own bits, which agree with it unless the
        plugin sets them itself), and afterwards the plugin's accessed bits in the ranges must read clear
        (``harvest_accessed(..., clear=True)`` does both); a mismatch is an ``accessed`` violation.
        The framework's record of those accesses is consumed by the call itself, never by the plugin.
        """

    @hookspec
    def clear_young(self, mm, start, end):
        """As ``clear_flush_young``, but the subscriber may skip the TLB flush.

        A stale TLB entry may then hide later accesses until it is evicted, so the answer is
        allowed to err toward "old" (the check reports only "young" answers for ranges not accessed).
        Returns a bool array, one element per range.
        """

    @hookspec
    def test_young(self, mm, pages):
        """Whether each page in ``pages`` was accessed through this subscriber, without clearing.

        Returns a bool array, one element per page, checked as ``clear_flush_young``'s answer is.
        Used by khugepaged-style scanners and reclaim to look, not to age: the subscriber's accessed bits
        must read after the call as before it (a change is an ``accessed`` violation at the call).
        """

    @hookspec
    def release(self, mm):
        """The mm is being torn down (exit_mmap): drop every translation and pin of this mm now.

        Called once, before the primary page tables are freed; the subscriber is then removed from
        the chain. After it returns, no client may access the mm's pages: the subscriber holds no entry
        (checked at the return).
        """

    @hookspec
    def change_pte(self, mm, pages, frames):
        """Historical (removed from the kernel in 2024): the PTE of each page now maps ``frames[i]``, read-only.

        Raised by KSM between ``invalidate_range_start`` and ``invalidate_range_end``; because start
        already zapped the translations, a subscriber usually finds nothing to change. Kept for
        experiments with the 2008 design.
        """

    @hookspec
    def arch_invalidate_secondary_tlbs(self, mm, start, end):
        """The CPU TLB entries for each range of ``mm`` were just flushed: flush yours too.

        For devices that walk the CPU page tables themselves (IOMMU shared virtual addressing) and keep
        only a TLB. Called in atomic context with the page-table lock held: must not sleep or fail.
        """


class FrameworkHooks:
    """Hooks called once per simulation (not per mm)."""

    @hookspec
    def register_components(self):
        """Return the component classes this plugin module provides.

        Each class derives from ``SecondaryMMU``, ``HostPolicy`` or ``Workload`` and has a ``name``
        matching its YAML file under ``conf/secondary/``, ``conf/policies/`` or ``conf/workload/``.
        """

    @hookspec
    def host_tick(self, sim):
        """Run this component's periodic work for the tick ``sim.tick`` (kswapd, NUMA scanning, ...).

        Called at the start of every tick, before the clients' accesses (after the OOM reaper's attempt,
        before the tick's invariant check): ``sim.tick`` counts from 0 and names the tick about to run,
        ``sim.time_ns`` is the simulated time before it (0 at tick 0). A killed tenant (``tenant.killed``)
        issues no more accesses; its mm is the OOM reaper's. The implementations run in pluggy's order, the
        last registered first (``Simulation.call_hook``): the secondary MMUs' first, the newest first; then the
        policies', in the reverse of their order in ``policies``; then module-level implementations.
        ``@hookimpl(tryfirst=True)`` (or ``trylast=True``) puts one before (after) all the others.
        """

    @hookspec(firstresult=True)
    def reclaim(self, sim, nr_pages, direct):
        """Free at least ``nr_pages`` frames if possible and return how many were freed.

        ``direct`` is True when an allocation is stalled at the min watermark (direct reclaim) and
        False when kswapd was woken at the low watermark. The first implementation to return a number
        wins; with none, nothing is ever reclaimed and allocations fail when memory runs out.
        """

    @hookspec
    def collect_metrics(self, sim):
        """Return a dict of this component's metrics (name -> number), added to the run's results.

        Each name is the framework's (``mmnsim.metrics.FRAMEWORK``) or declared in the component's
        ``declared_metrics``; an undeclared one stops the run (``MetricError``). Called for the results after
        the last tick and before teardown (every mm still live, as the last tick left it); a run with
        teardown calls it once more after every mm exited, keeping only the violation counts of that call."""
