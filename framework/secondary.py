"""The base of every secondary MMU plugin: the table it owns, and the helpers its notifier ops use.

The framework's access kernel reads and writes the table directly (a hit sets ``S_ACCESSED``; a fault
installs an entry, pinning its frame in pin mode); the plugin's Python runs per batch, in its notifier
ops. The plugin owns ``spte``/``sflags`` (its own table) and may write them; it reads the host's state
through read-only views and changes it only through the mm operations. Beside its table the framework
keeps ``accessed``, one byte per entry the plugin reads and cannot write (``SH_*`` bits of
``mmnsim.pagebits``): a shadow of the accessed bits that only the access kernel sets (on an access that
finds ``S_ACCESSED`` clear; the framework resets it when it installs or zaps an entry and when a young op
clears), which the young-op check judges answers by, and whether the framework pinned the entry's frame,
which the pin accounting and the unpinning trust rather than the plugin's ``S_PINNED``.

Nothing the plugin can write is trusted as it stands. The framework works on its own array objects over
the plugin's table and state (``_spte``, ``_sflags``, ``_state``: the same memory), so rebinding
``self.spte`` or changing an array's dtype or shape in place changes nothing the framework reads; every
frame number read from the table is bounds-checked before it indexes host memory; ``region``, ``young``,
``interval`` and the device node are taken once, at construction.

A plugin subclass sets ``name``, ``young`` and ``Config``, and implements the ``NotifierOps`` it needs
with ``@hookimpl`` methods, usually built from ``zap`` and ``harvest_accessed``.

Three kinds of subscriber, as in the kernel:

* a whole-mm subscriber (``struct mmu_notifier``, KVM) implements ``invalidate_range_start``/``_end`` and
  brackets its zaps with ``begin_invalidate``/``end_invalidate``;
* an interval subscriber (``struct mmu_interval_notifier``, RDMA ODP, GPU SVM) sets ``interval = True``,
  implements ``invalidate`` and calls ``set_seq(cur_seq)`` before zapping; it is called only for ranges
  that overlap its region;
* a device sharing the CPU page tables (IOMMU SVA) sets ``shares_cpu_tables = True`` and implements only
  ``arch_invalidate_secondary_tlbs``.

``state`` holds what the fault path checks before installing an entry: ``state[SEQ]`` (KVM's
mmu_invalidate_seq, or the interval's invalidate_seq), ``state[IN_PROGRESS]``
(mmu_invalidate_in_progress) and ``state[INV_LO:INV_HI + 1]``, the union of the ranges being invalidated
(mmu_invalidate_range_start/_end, grown by kvm_mmu_invalidate_range_add). A fault is retried when the
sequence moved since it began, or when an invalidation in progress covers its page
(mmu_invalidate_retry_gfn in include/linux/kvm_host.h; mmu_interval_read_retry for interval
subscribers). An MMU with ``SEC_RETRY_WHOLE_VM`` retries while any invalidation is in progress, as KVM's
mmu_notifier_retry did before the range was tracked (2.6.27 to 6.2). The protocol matters because a
fault can sleep between reading the sequence and installing (a swap-in's I/O, a device fault batch):
the access kernel opens such race windows (``engine.race_window``) and lets the host invalidate meanwhile,
so a plugin that forgets to bump the sequence (or to ``set_seq``) installs a stale entry, and the
coherence check reports it.
"""

from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import counters as C
from .arguments import OperationError, count_arg, int_scalar, page_arg, ranges_arrays
from .components import Component, Mode
from .costs import walk_refs
from .frames import ORPHAN, free_frame
from .kernel import AHEAD, U, count_at_least, kernel, prefetch
from .notifier import NotifierRange, PluginError, component_label, guarded, ranges_of
from .pagebits import HUGE_PAGES, PTE_NONE, S_ACCESSED, S_HUGE, SH_ACCESSED, SH_PINNED
from .pagetable import read_only
from .sectables import ACC_AGED, ACC_FLUSH_YOUNG, ACC_YOUNG, ACC_ZAP_RANGES, ACC_ZAPPED

if TYPE_CHECKING:
    from .simulation import Client, Simulation

# Layout of SecondaryMMU.state.
# DEV_NODE: device memory node or -1. INV_LO, INV_HI: pages being invalidated, while IN_PROGRESS > 0.
# FAULT_BLOCK: pages a device fault maps around the faulting page (a power of two; 0 or 1: just that page).
# RACE_RATE: the chance (of 2**32) that a fault through it sleeps in a race window (engine.race_window);
# RACE_COUNT: its faults drawn so far (the seeded draw's counter).
# PREFETCH: the aligned block (a power of two; 0 or 1: none) in which a fault that mapped one 4 KiB entry also
# maps the neighbours the primary table already maps, without faulting them in (``set_prefetch``).
(SEQ, IN_PROGRESS, MODE, DEV_NODE, REGION_LO, REGION_HI, INV_LO, INV_HI, FAULT_BLOCK, RACE_RATE, RACE_COUNT,
 PREFETCH) = range(12)  # fmt: skip
STATE_SIZE = 12
# Bits of state[MODE].
SEC_PIN = 1  # install entries with a long-term pin
SEC_YOUNG = 2  # accesses through this MMU are visible to reclaim (it implements the young ops)
SEC_NOFAULT = 4  # the device cannot fault: an access without an entry is an error (classic RDMA MRs)
SEC_HUGE = 8  # maps a transparent huge page with one 2 MiB entry (KVM's host-mapping-level rule)
SEC_RETRY_WHOLE_VM = 16  # retry every fault while any invalidation is in progress (KVM before 6.3)


class SecondaryMMU(Component):
    kind = "secondary"
    young: ClassVar[bool] = False  # True if the plugin reports accessed bits through the young ops
    huge: ClassVar[bool] = False  # True if it maps a THP with one 2 MiB entry
    interval: ClassVar[bool] = False  # True for an interval subscriber (implements ``invalidate``)
    # True to retry every fault while any invalidation is in progress (KVM before the gfn range was
    # tracked); a subclass may set it, like ``young``, on the instance before calling __init__.
    retry_whole_vm: ClassVar[bool] = False
    # True for a device that walks the CPU page table itself (IOMMU shared virtual addressing): it keeps
    # no table (``spte`` stays empty), its accesses go through the primary table and set its accessed
    # bits, a missing page is an I/O page fault (counted as its secondary fault), and all it needs to
    # implement is ``arch_invalidate_secondary_tlbs`` to flush its TLB.
    shares_cpu_tables: ClassVar[bool] = False
    # The hooks of this very class that the framework's compiled reclaim path may stand in for, because they
    # do exactly the standard thing (``mmnsim.fastpath``): ``invalidate_range_start`` is ``begin_invalidate``
    # and ``zap``, ``invalidate_range_end`` is ``end_invalidate``, ``clear_flush_young``/``clear_young``
    # return ``harvest_accessed(clear=True)``, each with its costs charged by ``charge_zap``/``charge_aging``.
    # Never inherited: a subclass, which may change any method, goes through the chain unless it declares
    # its own.
    fast_ops: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, sim: "Simulation", client: "Client", cfg: Any):
        self.sim = sim
        self.client = client
        self.mm = client.mm
        self.cfg = cfg
        self._region = tuple(client.region)  # ``region``: the pages [start, end) of the mm this device maps
        # What the framework reads of the class at check time, as the class said it at construction.
        self._young, self._interval = bool(self.young), bool(self.interval)
        # The mode it runs in: its configured one, except that before interval notifiers existed (kernel=2008)
        # an interval subscriber (RDMA ODP, GPU SVM) could only register by pinning (ib_umem_get, userptr).
        self.mode: Mode = cfg.mode
        forced = self.interval and cfg.mode is Mode.notifier and not sim.kernel.interval_notifiers
        if forced:
            self.mode = Mode.pin
        entries = 0 if self.shares_cpu_tables else self.mm.npages
        # Its table, the framework's own bits per entry beside it (SH_*), and its state: slices of the run's
        # secondary tables (``mmnsim.sectables``), so the compiled reclaim path reaches them by ``index``. The
        # framework keeps its own array objects (``_spte``, ``_sflags``, ``_state``); the plugin gets views of
        # the same memory (see the module's docstring), and a read-only view of the SH_* bits.
        self._index, self._spte, self._sflags, self._accessed, self._state = sim._secondary_tables.take(
            entries, self.mm.index
        )
        self.spte, self.sflags, self.state = self._spte.view(), self._sflags.view(), self._state.view()
        self.accessed = read_only(self._accessed)  # the plugin's view
        self._state[DEV_NODE] = -1
        self._state[REGION_LO], self._state[REGION_HI] = self._region
        self._state[MODE] = (
            (SEC_PIN if self.pin_mode else 0)
            | (SEC_YOUNG if self.young else 0)
            | (0 if self.faults else SEC_NOFAULT)
            | (SEC_HUGE if self.huge else 0)
            | (SEC_RETRY_WHOLE_VM if self.retry_whole_vm else 0)
        )
        self.metrics: dict[str, float] = defaultdict(float)  # this plugin's own metrics
        if forced:
            self.metrics["forced_pin"] = 1.0
        self._counts: dict[str, float] = defaultdict(float)  # the framework's per-MMU counters of its accesses

    @property
    def index(self) -> int:
        """Its index among the run's secondary tables (``mmnsim.sectables``); read-only."""
        return self._index

    def serves_fast(self, ops: tuple[str, ...]) -> bool:
        """Whether the compiled path may deliver ``ops`` to this MMU instead of its hooks (see ``fast_ops``)."""
        owner = next((c for c in type(self).__mro__ if "fast_ops" in vars(c)), None)
        return (
            owner is type(self)
            and self._spte.size > 0
            and all(op in self.fast_ops and op not in vars(self) for op in ops)
            and (self._young or not any(op.endswith("young") for op in ops))
        )

    def charge_zap(self, pages: int, ranges: int) -> None:
        """The costs of an invalidation that zapped ``pages`` entries in ``ranges`` ranges (those that held one),
        for an MMU with ``fast_ops``: what its ``invalidate_range_start`` charges after its zap."""
        raise NotImplementedError(f"secondary MMU '{self.label}' declares fast_ops but not charge_zap")

    def charge_aging(self, pages: int, young_flushed: int) -> None:
        """The costs of a young op over ``pages`` pages, ``young_flushed`` of whose ranges ``clear_flush_young``
        found young, for an MMU with ``fast_ops``: what its young ops charge after their harvest."""
        raise NotImplementedError(f"secondary MMU '{self.label}' declares fast_ops but not charge_aging")

    def _settle_invalidation(self) -> None:
        """Charge what the compiled path's invalidations did for this MMU since the last settling."""
        row = self.sim._secondary_tables.acc[self._index]
        zapped, ranges = int(row[ACC_ZAPPED]), int(row[ACC_ZAP_RANGES])
        row[ACC_ZAPPED] = row[ACC_ZAP_RANGES] = 0
        self.metrics["pages_zapped"] += zapped
        self._call("charge_zap", zapped, ranges)

    def _settle_aging(self) -> None:
        """Charge what the compiled path's young ops did for this MMU since the last settling."""
        row = self.sim._secondary_tables.acc[self._index]
        aged, flushed = int(row[ACC_AGED]), int(row[ACC_FLUSH_YOUNG])
        row[ACC_AGED] = row[ACC_YOUNG] = row[ACC_FLUSH_YOUNG] = 0
        self._call("charge_aging", aged, flushed)

    def _call(self, method: str, *args: object) -> object:
        """Its own ``method`` (the plugin's code), called as the hooks are (``notifier.guarded``)."""
        return guarded(self.sim.actors.running, component_label(self), method, getattr(self, method), *args)

    @classmethod
    def device_memory_pages(cls, cfg: Any) -> int:
        """Pages of device-private memory this device brings (a GPU's VRAM); 0 for none."""
        return 0

    @property
    def region(self) -> tuple[int, int]:
        """The pages [start, end) of the mm this device maps (``region_of``); read-only."""
        return self._region

    @property
    def device_node(self) -> int:
        """The node of this device's private memory, or -1."""
        return int(self._state[DEV_NODE])

    def migrate_to_ram(self, pages: np.ndarray, node: int) -> None:
        """dev_pagemap_ops.migrate_to_ram: something other than this device touched these pages of its
        private memory; bring them back to RAM on ``node`` (and drop or update this device's entries,
        since its own notifier skips its own MIGRATE events)."""
        raise PluginError(f"secondary MMU '{self.label}' has device memory but does not implement migrate_to_ram")

    @classmethod
    def region_of(cls, cfg: Any, mm_pages: int) -> tuple[int, int]:
        """The pages [start, end) of an mm of ``mm_pages`` pages this device maps; the whole mm unless
        the plugin says otherwise. Raise ConfigError for a region that does not fit."""
        return 0, mm_pages

    @property
    def label(self) -> str:
        return f"{self.name}[{self.mm.name}]"

    @property
    def pin_mode(self) -> bool:
        return self.mode is Mode.pin

    @property
    def faults(self) -> bool:
        """Whether the device can take a fault on a missing entry (KVM, ODP, SVM can; pinned MRs cannot)."""
        return True

    def walk_refs(self, huge: bool) -> float:
        """Memory references of one walk of this MMU's tables after a TLB miss (``mmnsim.costs.walk_refs``,
        page-walk caches counted): a 4-level table, one level less through a 2 MiB entry. A nested walk
        (KVM) costs more."""
        return walk_refs(self.sim.costs.pwc_miss, 3 if huge else 4)

    def tlb_huge(self) -> bool:
        """Whether a TLB entry for an access through a 2 MiB entry of this MMU covers 2 MiB (the smaller
        of every translation dimension's page; a guest's own 4 KiB pages splinter it)."""
        return True

    def fault_cost_ns(self, faults: int) -> float:
        """Cost of ``faults`` secondary faults beyond the primary fault path (VM exit and handling, ...)."""
        return faults * float(self.cfg.fault_ns)

    def guest_mode_ns(self, faults: int) -> float:
        """Of the cost of ``faults`` secondary faults (``fault_cost_ns``), the time their CPU still counts as on
        its client's accesses for a TLB-flush request (``Client.in_guest``): a vCPU's world switch, both ways,
        in guest mode. 0 by default: a device's fault is all host work."""
        return 0.0

    def attach(self) -> None:
        """Start mapping the mm: in notifier mode, subscribe to its chain (mmu_notifier_register or
        mmu_interval_notifier_insert). Pin and unpinned modes do not subscribe."""
        if self.mode is Mode.notifier:
            self.mm.chain.subscribe(self)

    def populate(self, start: int, end: int) -> int:
        """Fault in and map pages [start, end) now, as get_user_pages does for a registration (pinning
        them in pin mode); returns the pages mapped. No client access is counted."""
        return self.sim.populate(self, start, end)  # (checks the range)

    def set_fault_block(self, pages: int) -> None:
        """Make each device fault map the aligned block of ``pages`` (a power of two) around the faulting
        page, faulting in its neighbours too (a GPU driver's migration granularity); 1: the page alone."""
        pages = count_arg(pages, "set_fault_block", "pages")
        if pages < 1 or pages & (pages - 1) or pages > self.mm.npages:
            raise OperationError(f"set_fault_block: a fault block must be a power of two in [1, {self.mm.npages}] "
                                 f"(the mm's pages), got {pages}")  # fmt: skip
        self._state[FAULT_BLOCK] = pages

    def set_prefetch(self, pages: int) -> None:
        """Make each fault that maps one 4 KiB entry also map its neighbours in the aligned block of ``pages``
        (a power of two) whose pages the primary table already maps, in order from the block's start, up to
        the first that it does not (one absent, swapped out, PROT_NONE or device-private): KVM's shadow MMU,
        arch/x86/kvm/mmu/paging_tmpl.h FNAME(pte_prefetch) with PTE_PREFETCH_NUM 8, whose
        FNAME(prefetch_gpte) takes the host page only if get_user_page_fast_only finds it and stops the
        block at the first it cannot. Nothing is faulted in, no access is counted, the entries are installed
        with their accessed bit clear (make_spte with ``prefetch``) and, as there, not while an invalidation is
        in progress (mmu_invalidate_in_progress); each is counted in ``secondary_prefetched``. 1: none."""
        pages = count_arg(pages, "set_prefetch", "pages")
        if pages < 1 or pages & (pages - 1) or pages > HUGE_PAGES:
            raise OperationError(f"set_prefetch: a prefetch block must be a power of two in [1, {HUGE_PAGES}], "
                                 f"got {pages}")  # fmt: skip
        self._state[PREFETCH] = pages

    def fault_around(self, page: int) -> int:
        """Called by the framework after a device fault on ``page`` installed it, when a fault block is set:
        map the rest of the aligned block (within the region) as a populate would; returns the pages mapped.
        A plugin may extend it to charge its own costs."""
        page = page_arg(page, self.mm.npages, "fault_around", "page")
        block = int(self._state[FAULT_BLOCK])
        lo = max(page & ~(block - 1), self._region[0])
        hi = min((page & ~(block - 1)) + block, self._region[1])
        self._state[FAULT_BLOCK] = 1  # the block's own faults map one page each
        try:
            return self.populate(lo, hi) if lo < hi else 0
        finally:
            self._state[FAULT_BLOCK] = block

    def teardown(self) -> None:
        """The device goes away: drop every entry (and pin), and leave the chain."""
        self.zap(np.array([0]), np.array([self.mm.npages]))
        self.mm.chain.unsubscribe(self)

    def invalidate_self(self, ranges: "NotifierRange") -> None:
        """Deliver ``ranges`` to this MMU alone, through its own notifier ops, whatever its mode.

        For policies that act on one device rather than on the mm (eager release).
        """
        ranges = ranges_of(ranges, self.mm, "invalidate_self")
        chain = self.mm.chain
        if self._interval:  # a sequence number of the mm's own (mn_itree_inv_start_range): unique, so a
            chain.invalidate_seq += 1  # fault in flight retries (``state[SEQ] + 1`` could be a later cur_seq)
            chain.call_one(self, "invalidate", ranges=ranges, cur_seq=chain.invalidate_seq)
            chain.invalidate_seq += 1
            return
        if getattr(self, "invalidate_range_start", None) is None:
            raise PluginError(f"secondary MMU '{self.label}' implements no invalidate_range_start")
        chain.call_one(self, "invalidate_range_start", ranges=ranges)
        if getattr(self, "invalidate_range_end", None) is not None:
            chain.call_one(self, "invalidate_range_end", ranges=ranges)

    # -- helpers for NotifierOps implementations --

    def begin_invalidate(self, ranges: NotifierRange | None = None) -> None:
        """kvm_mmu_invalidate_begin + kvm_mmu_invalidate_range_add: raise in_progress and add ``ranges``
        (None: the whole mm) to the range the fault path must not install into until ``end_invalidate``."""
        lo, hi = (0, self.mm.npages) if ranges is None else ranges_of(ranges, self.mm, "begin_invalidate").span()
        state = self._state
        if state[IN_PROGRESS] == 0:
            state[INV_LO], state[INV_HI] = lo, hi
        else:
            state[INV_LO] = min(state[INV_LO], lo)
            state[INV_HI] = max(state[INV_HI], hi)
        state[IN_PROGRESS] += 1

    def end_invalidate(self) -> None:
        self._state[IN_PROGRESS] -= 1
        self._state[SEQ] += 1

    def bump_seq(self) -> None:
        """Move the sequence without an in-progress window (2.6.27's invalidate_page: mmu_notifier_seq++),
        so that a fault that resolved its page before the invalidation retries."""
        self._state[SEQ] += 1

    def set_seq(self, cur_seq: int) -> None:
        """mmu_interval_set_seq: faults that began before this invalidation will retry."""
        self._state[SEQ] = int_scalar(cur_seq, "set_seq", "cur_seq")

    def zap(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Drop the entries in each range, releasing their pins; return entries dropped per range."""
        start, end = ranges_arrays(start, end, self.mm.npages, "zap")
        zapped = np.zeros(start.size, dtype=np.int64)
        if self._spte.size == 0:  # no table of its own (shares_cpu_tables)
            return zapped
        host = self.sim.host
        ft = host._ft
        total = _zap(self._spte, self._sflags, self._accessed, start, end, ft.key, ft.token, ft.pin,
                     ft.node, ft.lists, ft.pb, ft.bits, host._ctr, zapped)  # fmt: skip
        self.metrics["pages_zapped"] += total
        return zapped

    def harvest_accessed(self, start: np.ndarray, end: np.ndarray, clear: bool) -> np.ndarray:
        """Whether any entry in each range has its accessed bit set (``S_ACCESSED`` in its own ``sflags``);
        clear the bits if asked. The framework's shadow is not touched: only the framework consumes it, just
        before a clearing young op."""
        start, end = ranges_arrays(start, end, self.mm.npages, "harvest_accessed")
        young = np.zeros(start.size, dtype=np.bool_)
        if self._spte.size == 0:
            return young
        _harvest(self._sflags, start, end, bool(clear), young)
        return young

    def shadow_young(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Whether the access kernel saw an access through an entry in each range since the shadow was
        last cleared (installing or zapping an entry clears it): the truth the young ops are judged by."""
        return self._read_shadow(start, end, consume=False)

    def _consume_shadow(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """``shadow_young``, clearing the shadow over the ranges: the notifier chain calls it just before a
        clearing young op, which consumes the accesses (nothing accesses memory during the op)."""
        return self._read_shadow(start, end, consume=True)

    def _read_shadow(self, start: np.ndarray, end: np.ndarray, consume: bool) -> np.ndarray:
        start, end = ranges_arrays(start, end, self.mm.npages, "shadow_young")
        young = np.zeros(start.size, dtype=np.bool_)
        if self._spte.size:
            _shadow_young(self._accessed, start, end, consume, young)
        return young

    def _accessed_left(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """After a clearing young op: per range, whether the plugin's own accessed bits still read set
        (the op's postcondition is that none does)."""
        kept = np.zeros(start.size, dtype=np.bool_)
        if self._spte.size:
            _harvest(self._sflags, _int64(start), _int64(end), False, kept)  # reads, not the plugin's
        return kept

    def mapped_pages(self) -> int:
        return int(count_at_least(self._spte, 0))


def _int64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


# The young ops' ranges are reclaim's: one page each, far apart, so each loop prefetches ahead.


@kernel
def _shadow_young(shadow, start, end, consume, young):
    for r in range(start.size):
        if r + AHEAD < start.size and start[r + AHEAD] < shadow.size:
            prefetch(shadow, U(start[r + AHEAD]))
        seen = False
        for p in range(start[r], end[r]):
            seen |= (shadow[p] & SH_ACCESSED) != 0
            if consume:
                shadow[p] &= SH_PINNED
        young[r] = seen


@kernel(inline=True)
def zap_range(spte, sflags, shadow, lo, hi, fkey, ftoken, fpin, node, lists, pb, bits, ctr):
    """Drop the entries of pages [lo, hi) (a 2 MiB entry the range touches goes as a whole), releasing their
    pins; return how many were dropped. Shared by ``zap`` and the compiled reclaim path."""
    if lo < spte.size and sflags[lo] & S_HUGE:  # a 2 MiB entry goes as a whole
        lo = lo & ~(HUGE_PAGES - 1)
    if hi - 1 < spte.size and sflags[hi - 1] & S_HUGE:
        hi = min((hi - 1 | (HUGE_PAGES - 1)) + 1, spte.size)
    count = 0
    for p in range(lo, hi):
        f = spte[p]
        if f < 0:
            continue
        # unpin_user_page, if the framework pinned it (not the plugin's S_PINNED, nor a frame number it
        # rewrote out of range or to an unpinned frame: the pin check then names what is left pinned)
        if shadow[p] & SH_PINNED and f < fpin.size and fpin[f] > 0:
            fpin[f] -= 1
            ctr[C.PINS_RELEASED] += 1
            if fpin[f] == 0 and fkey[f] == ORPHAN:  # an orphan whose last pin goes is freed
                free_frame(node, lists, pb, bits, fkey, ftoken, f)
        spte[p] = PTE_NONE
        sflags[p] = 0
        shadow[p] = 0
        count += 1
    return count


@kernel
def _zap(spte, sflags, shadow, start, end, fkey, ftoken, fpin, node, lists, pb, bits, ctr, zapped):
    total = 0
    for r in range(start.size):
        if r + AHEAD < start.size and start[r + AHEAD] < spte.size:  # reclaim's ranges are pages far apart
            prefetch(spte, U(start[r + AHEAD]))
            prefetch(sflags, U(start[r + AHEAD]))
        count = zap_range(spte, sflags, shadow, start[r], end[r], fkey, ftoken, fpin, node, lists, pb, bits, ctr)
        zapped[r] = count
        total += count
    return total


@kernel
def _harvest(sflags, start, end, clear, young):
    for r in range(start.size):
        if r + AHEAD < start.size and start[r + AHEAD] < sflags.size:
            prefetch(sflags, U(start[r + AHEAD]))
        seen = False
        for p in range(start[r], end[r]):  # without a branch on the bit: young or not is a coin toss
            fl = sflags[p]
            seen |= (fl & S_ACCESSED) != 0
            if clear:
                sflags[p] = fl & ~S_ACCESSED
        young[r] = seen


def device_region(start_mib: int, size_mib: int | None, mm_pages: int) -> tuple[int, int]:
    """The pages [start, end) of a device's region given in MiB (size None: to the end of the mm).

    For ``region_of`` of plugins that map part of an mm; raises ConfigError naming what does not fit."""
    from .config import ConfigError
    from .host import MIB_PAGES

    start = start_mib * MIB_PAGES
    end = mm_pages if size_mib is None else start + size_mib * MIB_PAGES
    mm_mib = mm_pages // MIB_PAGES
    if size_mib is not None and size_mib <= 0:
        raise ConfigError(f"region_mib must be > 0 (a region needs at least one page), got {size_mib}")
    if start_mib < 0 or start >= mm_pages:
        raise ConfigError(f"region_start_mib={start_mib} is outside the mm of {mm_mib} MiB (0..{mm_mib - 1})")
    if end > mm_pages:
        raise ConfigError(
            f"region [{start_mib} MiB, {end // MIB_PAGES} MiB) does not fit in the mm of {mm_mib} MiB; "
            "need region_start_mib + region_mib <= mm size"
        )
    return start, end
