"""Deliberately broken plugins, for checking that the framework catches every broken contract.

``secondary=faulty secondary.fault=NAME`` is KVM with one bug; ``secondary=faulty_odp`` is RDMA on-demand
paging with one; ``'policies=[swap,faulty_policy]' policies.faulty_policy.fault=NAME`` is a host policy with
one. Each bug is one the kernel's rules (or the framework's contract) exist to prevent, and each is caught:

=================== ==================================================== =========================================
fault               what the plugin does                                 how it is caught
=================== ==================================================== =========================================
ignore_invalidate   invalidate_range_start keeps every spte              coherence/isolation check: the plugin,
                                                                         page and stale frame
map_in_window       zaps, then maps the pages again from the primary     coherence/isolation check, once the
                    table inside the window (no in_progress, no retry)   primary drops the frames
keep_pins           (pin mode) keeps its entries and pins at teardown    the check after the teardown: a frame
                                                                         only a pin keeps alive
young_all           answers every young op "young"                       accessed check at the call
young_none          answers every young op "not young"                   accessed check (clear_flush_young and
                                                                         test_young; clear_young may err so)
raise_in_hook       raises inside invalidate_range_start                 PluginError naming plugin and op
no_seq_bump         end_invalidate lowers in_progress but never bumps    coherence, the moment a fault that
                    the sequence                                         slept in a race window while the host
                                                                         reclaimed its page installs the stale
                                                                         frame (engine.race_window)
defer_unmap         invalidate_range_start only raises in_progress; the  coherence, at the return of
                    zap waits for invalidate_range_end, after the        invalidate_range_start: entries left in
                    primary changed and the pages were freed             its ranges
keep_until_tick     keeps its entries through the invalidation and       coherence, at the return of
                    drops them at its next host_tick, before any         invalidate_range_start (the end-of-tick
                    end-of-tick check could see them                     check would find nothing)
ignore_nonblockable accepts a non-blockable range (the OOM reaper's)     coherence, at the return of
                    without zapping: "done"                              invalidate_range_start
test_young_clears   test_young clears the accessed bits it reads         accessed, at the test_young call
refuse_nonblockable (faulty_odp) refuses every non-blockable batch       counted (invalidations_refused) and
                                                                         logged; legal, but never silent
no_set_seq          (faulty_odp) zaps in invalidate but never calls      coherence/isolation check, as
                    set_seq(cur_seq)                                     no_seq_bump
forge_pins          marks every entry S_PINNED, pinning nothing          nothing to catch: pins are counted and
                                                                         released by the framework's own record
                                                                         (SecondaryMMU.accessed), not its bits
wild_frame          writes a frame number past the host's memory into    isolation check: "no frame of the host",
                    its table                                            naming it; no read past memory
rewrite_pinned      (pin mode) points a pinned entry at another frame    pin check (the pinned frame is held by
                                                                         no entry), coherence; no pin underflow
swap_table          replaces its table with a small int8 array and       nothing to catch: the framework works on
                    reshapes its state                                   its own views of the table's memory
raise_in_fault_     sets a fault block and raises in fault_around        PluginError naming it and fault_around
around
nan_fault_cost      returns NaN from fault_cost_ns                       PluginError naming it and fault_cost_ns
=================== ==================================================== =========================================

``faulty_policy`` (a host policy; its faults, ``policies.faulty_policy.fault``):

=================== ==================================================== =========================================
flip_view           sets a page table view writable and clears dirty     PluginError: "wrote to host state ...
                    bits through it (instead of ``mm.mkclean``)          through a read-only view", naming it
collapse_past_end   collapse_huge_page at the mm's end (the compiled     PluginError naming it, the operation and
                    collapse wrote past the page table before)           the argument
discard_negative    discards page -1 (numpy wrapped it to the last page) PluginError naming it and discard
charge_nan          charges NaN ns of host work                          PluginError naming it and charge
=================== ==================================================== =========================================
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, NotifierRange, collapse_huge_page, hookimpl, require
from mmnsim.pagebits import P_DIRTY, S_PINNED, clear_mask

from .kvm import KVM, KVMConfig
from .rdma import RDMA, RDMAConfig

KVM_FAULTS = ("none", "ignore_invalidate", "map_in_window", "keep_pins", "young_all", "young_none", "raise_in_hook",
              "no_seq_bump", "defer_unmap", "keep_until_tick", "ignore_nonblockable", "test_young_clears",
              "forge_pins", "wild_frame", "rewrite_pinned", "swap_table", "raise_in_fault_around",
              "nan_fault_cost")  # fmt: skip
ODP_FAULTS = ("none", "refuse_nonblockable", "no_set_seq")
POLICY_FAULTS = ("none", "flip_view", "collapse_past_end", "discard_negative", "charge_nan")
WILD_FRAME = 2**31 - 1  # a frame number no host has


@dataclass
class FaultyKVMConfig(KVMConfig):
    fault: str  # one of KVM_FAULTS

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.fault in KVM_FAULTS, f"fault must be one of {', '.join(KVM_FAULTS)}; got {self.fault!r}")


class FaultyKVM(KVM):
    name = "faulty"
    Config = FaultyKVMConfig

    def __init__(self, sim, client, cfg):
        super().__init__(sim, client, cfg)
        self.deferred: list[NotifierRange] = []  # ranges whose zap it put off (defer_unmap, keep_until_tick)

    @hookimpl
    def invalidate_range_start(self, ranges: NotifierRange) -> None:
        fault = self.cfg.fault
        if fault == "raise_in_hook":
            raise RuntimeError("injected fault")
        if fault == "ignore_invalidate" or (fault == "ignore_nonblockable" and not ranges.blockable):
            self.begin_invalidate()
            return
        if fault in ("defer_unmap", "keep_until_tick"):  # "later" is after the pages were freed
            self.begin_invalidate(ranges)
            self.deferred.append(ranges)
            return
        if fault == "map_in_window":  # a driver that prefetches in its callback, skipping the retry rule
            self.zap(ranges.start, ranges.end)
            pages = ranges.pages()
            frames = self.mm.pte[pages]
            ok = frames >= 0
            self.spte[pages[ok]] = frames[ok]
            self.sflags[pages[ok]] = 0
            return
        super().invalidate_range_start(ranges)

    @hookimpl
    def invalidate_range_end(self, ranges: NotifierRange) -> None:
        if self.cfg.fault == "defer_unmap":
            self._zap_deferred()
        if self.cfg.fault != "map_in_window":  # it never raised in_progress
            self.end_invalidate()

    @hookimpl
    def host_tick(self, sim) -> None:
        """keep_until_tick drops what it kept; the other faults here write the plugin's own table or state
        behind the framework's back."""
        fault = self.cfg.fault
        if fault == "keep_until_tick":
            self._zap_deferred()
        mapped = np.flatnonzero(self.spte >= 0)
        if fault == "forge_pins":
            self.sflags[mapped] |= S_PINNED
        elif fault == "wild_frame" and mapped.size:
            self.spte[mapped[:: max(1, mapped.size // 4)]] = WILD_FRAME
        elif fault == "rewrite_pinned" and mapped.size > 1:
            self.spte[mapped[0]] = self.spte[mapped[-1]]  # a frame the entry never pinned
        elif fault == "swap_table":
            self.spte = np.zeros(3, dtype=np.int8)
            self.sflags = np.zeros(3, dtype=np.int64)
            self.state.shape = (1, -1)

    def _zap_deferred(self) -> None:
        for ranges in self.deferred:
            self.zap(ranges.start, ranges.end)
        self.deferred.clear()

    def end_invalidate(self) -> None:
        if self.cfg.fault != "no_seq_bump":
            super().end_invalidate()
            return
        before = self.state.copy()
        super().end_invalidate()
        bumped = self.state > before  # the sequence; in_progress went down
        self.state[bumped] = before[bumped]

    def _answer(self, honest: np.ndarray) -> np.ndarray:
        if self.cfg.fault == "young_all":
            return np.ones_like(honest)
        if self.cfg.fault == "young_none":
            return np.zeros_like(honest)
        return honest

    @hookimpl
    def clear_flush_young(self, mm, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return self._answer(self._age(start, end, flush=True))

    @hookimpl
    def clear_young(self, mm, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return self._answer(self._age(start, end, flush=False))

    @hookimpl
    def test_young(self, mm, pages: np.ndarray) -> np.ndarray:
        if self.cfg.fault == "test_young_clears":  # ages where it should only look
            return self.harvest_accessed(pages, pages + 1, clear=True)
        return self._answer(super().test_young(mm, pages))

    def teardown(self) -> None:
        if self.cfg.fault == "keep_pins":  # leaves the chain, keeps its table and the pins it holds
            self.mm.chain.unsubscribe(self)
            return
        super().teardown()

    def attach(self) -> None:
        super().attach()
        if self.cfg.fault == "raise_in_fault_around":
            self.set_fault_block(8)

    def fault_around(self, page: int) -> int:
        if self.cfg.fault == "raise_in_fault_around":
            raise RuntimeError("injected fault")
        return super().fault_around(page)

    def fault_cost_ns(self, faults: int) -> float:
        return float("nan") if self.cfg.fault == "nan_fault_cost" else super().fault_cost_ns(faults)


@dataclass
class FaultyODPConfig(RDMAConfig):
    fault: str  # one of ODP_FAULTS

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.fault in ODP_FAULTS, f"fault must be one of {', '.join(ODP_FAULTS)}; got {self.fault!r}")


class FaultyODP(RDMA):
    name = "faulty_odp"
    Config = FaultyODPConfig

    @hookimpl
    def invalidate(self, ranges: NotifierRange, cur_seq: int) -> bool:
        if self.cfg.fault == "refuse_nonblockable" and not ranges.blockable:
            return False
        return super().invalidate(ranges, cur_seq)

    def set_seq(self, cur_seq: int) -> None:
        if self.cfg.fault != "no_set_seq":  # faults that began before this invalidation will not retry
            super().set_seq(cur_seq)


@dataclass
class FaultyPolicyConfig:
    fault: str  # one of POLICY_FAULTS

    def __post_init__(self) -> None:
        require(self.fault in POLICY_FAULTS, f"fault must be one of {', '.join(POLICY_FAULTS)}; got {self.fault!r}")


class FaultyPolicy(HostPolicy):
    """A host policy with one bug, from its second tick on (the first runs clean)."""

    name = "faulty_policy"
    Config = FaultyPolicyConfig

    @hookimpl
    def host_tick(self, sim) -> None:
        if sim.tick < 1:
            return
        mm = sim.tenants[0].mm
        fault = self.cfg.fault
        if fault == "flip_view":  # the write-protect of writeback done by hand, not through mm.mkclean
            flags = mm.flags
            flags.flags.writeable = True
            flags[:] &= clear_mask(P_DIRTY)
        elif fault == "collapse_past_end":
            collapse_huge_page(sim, mm, mm.npages, 0)
        elif fault == "discard_negative":
            mm.discard(np.array([-1]))
        elif fault == "charge_nan":
            sim.charge(float("nan"))


@hookimpl
def register_components():
    return [FaultyKVM, FaultyODP, FaultyPolicy]
