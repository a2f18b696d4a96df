"""An mm's notifier chain: its subscribers, and the calls that deliver ``NotifierOps`` to them.

The chain is a pluggy plugin manager per mm, holding the ``NotifierOps`` spec; subscribing registers a
secondary MMU object in it. Whole-mm subscribers get every call, newest first, as the kernel walks its
hlist. Interval subscribers (``interval = True``, mmu_interval_notifier) get ``invalidate`` only for the
ranges that overlap their ``region``, clipped to it, before the whole-mm subscribers' start, as
mn_itree_invalidate runs first; at teardown they get ``invalidate`` with event RELEASE. A subscriber that
raises, or refuses what it may not refuse, is reported as a ``PluginError`` naming it.
"""

import logging
import traceback
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
import pluggy

from .arguments import OperationError, int_array, ranges_arrays
from .config import ConfigError
from .counters import INVALIDATE_PAGE_CALLS, INVALIDATIONS, INVALIDATIONS_BY_EVENT, INVALIDATIONS_REFUSED
from .hookspecs import PROJECT, NotifierOps
from .invariants import InvariantViolation, verify_invalidated, verify_test_young, verify_young
from .pagebits import S_ACCESSED
from .pagetable import MM_HAS_NOTIFIERS, frozen, is_frozen
from .traces import TraceError

log = logging.getLogger("mmnsim")
tracebacks = logging.getLogger("mmnsim.traceback")  # a plugin's traceback: to the log file, not the console
_NO_TABLE = np.zeros(0)
# The ops after which a subscriber that accepted holds no entry in the ranges (checked at the return).
_INVALIDATING = frozenset({"invalidate_range_start", "invalidate", "invalidate_page", "release"})


class Event(IntEnum):
    """Why an invalidation happens: ``enum mmu_notifier_event`` (include/linux/mmu_notifier.h), with the
    kernel paths that raise each, as the simulator raises them."""

    UNMAP = 0  # munmap/exit (unmap_vmas), the OOM reaper (__oom_reap_task_mm, non-blockable)
    # The PTEs are cleared but the range stays: MADV_DONTNEED (zap_page_range_single), reclaim
    # (try_to_unmap_one), NUMA and compaction migration (try_to_migrate_one), THP split (__split_huge_pmd)
    # and collapse (collapse_huge_page), KSM (write_protect_page, replace_page), COW (wp_page_copy).
    CLEAR = 1
    PROTECTION_VMA = 2  # mprotect and NUMA balancing's change_prot_numa (change_pud_range), over the range
    PROTECTION_PAGE = 3  # one page write-protected (page_mkclean_one: writeback)
    SOFT_DIRTY = 4  # soft-dirty tracking write-protected the range
    RELEASE = 5  # the mm is being torn down (interval notifiers, mn_itree_release)
    MIGRATE = 6  # device migration only (migrate_vma_collect, mm/migrate_device.c); ``owner`` is the device
    EXCLUSIVE = 7  # a device takes exclusive access (make_device_exclusive; ``owner`` is the device)


class PluginError(RuntimeError):
    """A plugin broke the hook contract (raised, refused a blockable range, livelocked, ...)."""


# Errors the framework raises on purpose, which a wrapper around a plugin call passes on as they are (a trace
# file's error, raised in a trace workload's ``pages``, is an input error: the command names the file).
FRAMEWORK_ERRORS = (PluginError, ConfigError, InvariantViolation, TraceError)


def component_label(comp: Any) -> str:
    """A component as messages name it: "secondary MMU 'kvm[guest0]'", "policy 'swap'", "workload 'zipf'"."""
    if getattr(comp, "kind", "") == "secondary":
        return f"secondary MMU '{comp.label}'"
    return f"{getattr(comp, 'kind', '') or 'plugin'} '{getattr(comp, 'name', type(comp).__name__)}'"


def plugin_label(plugin_name: str) -> str:
    """A pluggy plugin name as a reader knows it: "policy:swap" -> "policy 'swap'"."""
    kind, _, name = plugin_name.partition(":")
    return f"{kind} '{name}'" if name else f"plugin '{kind}'"


def plugin_error(who: str, hook: str, exc: BaseException) -> PluginError:
    """The one-line error for ``exc`` raised by ``who`` in ``hook``; its traceback goes to the run's log file
    only (the ``mmnsim.traceback`` logger, which the command's logging config sends to the file, not the
    console)."""
    tracebacks.error("%s raised in %s:\n%s", who, hook, "".join(traceback.format_exception(exc)).rstrip())
    if isinstance(exc, ValueError) and ("read-only" in str(exc) or "WRITEABLE" in str(exc)):
        return PluginError(f"{who} wrote to host state in {hook} through a read-only view ({exc}): plugins change "
                           "host state only through the mm operations, which raise the notifiers")  # fmt: skip
    if isinstance(exc, OperationError):
        return PluginError(f"{who} called an operation with a bad argument in {hook}: {exc}")
    return PluginError(f"{who} raised in {hook}: {exc!r}")


def guarded(running: list[str], who: str, method: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``, a plugin's method (``who``'s ``method``), as the current actor (pushed on ``running``, the
    ``Actors`` stack), as the hooks are called: an exception other than the framework's own becomes a one-line
    ``PluginError`` naming ``who`` and ``method`` (``plugin_error``). For the calls into a plugin that are
    not hooks: ``attach``, ``fault_around``, ``fault_cost_ns``, ``walk_refs``, ``tlb_huge``,
    ``migrate_to_ram``, ``teardown``, ``invalidate_self``'s delivery, a constructor, a workload's ``pages``."""
    running.append(f"{who} in {method}")
    try:
        return fn(*args, **kwargs)
    except FRAMEWORK_ERRORS:
        raise
    except Exception as exc:
        raise plugin_error(who, method, exc) from exc
    finally:
        running.pop()


class _Impl(NamedTuple):
    name: str  # the subscriber's name in the chain
    function: Any
    argnames: tuple[str, ...]
    plugin: object
    label: str  # who runs, for culprit attribution: "secondary MMU 'kvm' in invalidate_range_start"


@dataclass(frozen=True, eq=False)
class NotifierRange:
    """``struct mmu_notifier_range`` for a batch: ranges ``[start[i], end[i])`` of one mm, one event."""

    mm: Any
    start: np.ndarray  # int64 page numbers inside the mm
    end: np.ndarray  # int64, exclusive
    event: Event
    blockable: bool = True
    owner: object | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, Event):
            try:
                object.__setattr__(self, "event", Event(self.event))
            except (ValueError, TypeError):
                accepted = ", ".join(e.name for e in Event)
                message = f"NotifierRange: unknown notifier event {self.event!r}; accepted: {accepted}"
                raise OperationError(message) from None
        # Inside the mm, each end > its start; read-only, since every subscriber and the operation's own
        # change read the same arrays after a plugin had them (a range moved by one would move the change).
        npages = getattr(self.mm, "npages", None)
        if npages is None:
            raise OperationError(f"NotifierRange: mm must be an mmnsim.MM, got {self.mm!r}")
        start, end = ranges_arrays(self.start, self.end, npages, "NotifierRange", empty_ok=False, copy=False)
        if start.size == 0:
            raise OperationError("NotifierRange: a batch needs at least one range")
        object.__setattr__(self, "start", start if is_frozen(start) else frozen(start))
        object.__setattr__(self, "end", end if is_frozen(end) else frozen(end))

    def __len__(self) -> int:
        return int(self.start.size)

    def span(self) -> tuple[int, int]:
        """The lowest start and the highest end of the batch."""
        if self.start.size == 1:
            return int(self.start[0]), int(self.end[0])
        return int(self.start.min()), int(self.end.max())

    def pages(self) -> np.ndarray:
        """Every page of every range, concatenated in range order."""
        return expand_ranges(self.start, self.end)

    def sum_per_range(self, per_page: np.ndarray) -> np.ndarray:
        """Sum a per-page array (aligned with ``pages()``) within each range."""
        return sum_per_range(self.start, self.end, per_page)


def expand_ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    lengths = end - start
    if lengths.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.all(lengths == 1):
        return start.astype(np.int64, copy=False)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(start - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def sum_per_range(start: np.ndarray, end: np.ndarray, per_page: np.ndarray) -> np.ndarray:
    lengths = end - start
    if lengths.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.all(lengths == 1):
        return per_page.astype(np.int64, copy=False)
    return np.add.reduceat(per_page.astype(np.int64, copy=False), np.cumsum(lengths) - lengths)


def ranges_of(ranges: Any, mm: Any, op: str) -> NotifierRange:
    """``ranges`` if it is a ``NotifierRange`` of ``mm`` (checked inside it when built), else OperationError."""
    if not isinstance(ranges, NotifierRange) or ranges.mm is not mm:
        got = f"ranges of mm '{getattr(ranges.mm, 'name', ranges.mm)}'" if isinstance(ranges, NotifierRange) else (
            repr(ranges)[:80])  # fmt: skip
        raise OperationError(f"{op}: expected a NotifierRange of mm '{getattr(mm, 'name', mm)}', got {got}")
    return ranges


def describe_ranges(start: np.ndarray, end: np.ndarray) -> str:
    """The ranges for a message: "pages [a, b)", and how many more the batch holds."""
    more = f" and {start.size - 1} more ranges" if start.size > 1 else ""
    return f"pages [{int(start[0])}, {int(end[0])}){more}"


def single_pages(mm: Any, pages: np.ndarray, event: Event, **kw: Any) -> NotifierRange:
    """One range per page, as the kernel's per-folio calls in reclaim and migration."""
    pages = int_array(pages, "single_pages", "pages", copy=False)  # (checked inside the mm by NotifierRange)
    return NotifierRange(mm, pages, pages + 1, event, **kw)


def page_runs(mm: Any, pages: np.ndarray, event: Event, **kw: Any) -> NotifierRange:
    """One range per run of consecutive pages (``pages`` sorted, without repeats), as a caller that walks
    each contiguous virtual range once (migrate_vma_setup per range)."""
    pages = np.asarray(pages, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate((pages[:1], pages[breaks]))
    ends = np.concatenate((pages[breaks - 1], pages[-1:])) + 1
    return NotifierRange(mm, starts, ends, event, **kw)


class NotifierChain:
    """The subscribers of one mm and the delivery of ``NotifierOps`` to them."""

    def __init__(self, mm: Any):
        self.mm = mm
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(NotifierOps)
        self.invalidate_seq = 0  # odd while an invalidation runs (mmu_notifier_subscriptions.invalidate_seq)
        self._by_op: dict[str, tuple[_Impl, ...]] = {}  # each op's implementations, newest first (see _impls)

    # -- subscription (mmu_notifier_register / mmu_notifier_unregister) --

    def subscribe(self, subscriber: object) -> None:
        interval = getattr(subscriber, "interval", False)
        ops = {"invalidate"} if interval else {"invalidate_range_start", "invalidate_range_end"}
        wrong = [op for op in ("invalidate", "invalidate_range_start") if op not in ops and _implements(subscriber, op)]
        if wrong:
            kind = "an interval" if interval else "a whole-mm"
            raise PluginError(
                f"secondary MMU '{_label(subscriber)}' is {kind} subscriber but implements {wrong[0]}: interval "
                "subscribers implement invalidate, whole-mm ones invalidate_range_start/_end"
            )
        self._pm.register(subscriber, name=unique_name(self._pm, _label(subscriber)))
        self._changed()
        self.mm._set_flag(MM_HAS_NOTIFIERS, True)

    def unsubscribe(self, subscriber: object) -> None:
        if self._pm.is_registered(subscriber):
            self._pm.unregister(subscriber)
        self._changed()
        self.mm._set_flag(MM_HAS_NOTIFIERS, bool(self.subscribers()))

    def _changed(self) -> None:
        self._by_op.clear()
        self.mm.sim.fast.changed()

    def subscribers(self) -> list[object]:
        return list(self._pm.get_plugins())

    def __bool__(self) -> bool:
        # The flag the access kernel reads, kept by (un)subscribe and release: cheaper than asking pluggy.
        return bool(self.mm.sim.host._pt.mm_flags[self.mm.index] & MM_HAS_NOTIFIERS)

    # -- delivery --

    def _impls(self, op: str) -> tuple["_Impl", ...]:
        """The subscribers implementing ``op``, newest first; kept per op until the chain changes (these
        calls are on reclaim's path: one per op per batch)."""
        impls = self._by_op.get(op)
        if impls is None:
            impls = self._by_op[op] = tuple(
                _Impl(i.plugin_name, i.function, tuple(i.argnames), i.plugin,
                      f"secondary MMU '{i.plugin_name}' in {op}")
                for i in reversed(getattr(self._pm.hook, op).get_hookimpls())
            )  # fmt: skip
        return impls

    def call(self, op: str, stop_on_refusal: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``op`` on every subscriber implementing it; return (subscriber name, result) pairs.

        ``invalidate`` goes to each interval subscriber with ``ranges`` clipped to its region, if any
        overlap. ``stop_on_refusal``: stop after the first subscriber that returns False."""
        results = []
        impls = self._impls(op)
        if not impls:
            return results
        running = self.mm.sim.actors.running  # the culprit stack (actors.acting, inlined: a hot path)
        for name, fn, argnames, plugin, label in impls:
            args = kwargs
            if op == "invalidate":
                clipped = _clip(kwargs["ranges"], plugin.region)
                if clipped is None:
                    continue
                args = {**kwargs, "ranges": clipped}
            running.append(label)
            try:
                result = fn(*[args[a] for a in argnames])
            except FRAMEWORK_ERRORS:
                raise
            except Exception as exc:
                raise plugin_error(f"secondary MMU '{name}'", op, exc) from exc
            finally:
                running.pop()
            results.append((name, result))
            if op in _INVALIDATING and result is not False and getattr(plugin, "_spte", _NO_TABLE).size:
                self._verify_invalidated(plugin, op, args)
            if stop_on_refusal and result is False:
                break
        return results

    def call_one(self, subscriber: object, op: str, **kwargs: Any) -> Any:
        """``op`` on ``subscriber`` alone, subscribed or not (a policy acting on one device, as eager release
        does), as ``call`` delivers it: the subscriber named if it raises, its postcondition checked."""
        label = f"secondary MMU '{_label(subscriber)}'"
        running = self.mm.sim.actors.running
        running.append(f"{label} in {op}")
        try:
            result = getattr(subscriber, op)(**kwargs)
        except FRAMEWORK_ERRORS:
            raise
        except Exception as exc:
            raise plugin_error(label, op, exc) from exc
        finally:
            running.pop()
        if op in _INVALIDATING and result is not False and getattr(subscriber, "_spte", _NO_TABLE).size:
            self._verify_invalidated(subscriber, op, kwargs)
        return result

    def _verify_invalidated(self, subscriber: object, op: str, args: dict[str, Any]) -> None:
        """The subscriber accepted the invalidation: check, now, that it holds no entry in its ranges."""
        if op == "release":
            start, end, what = np.array([0]), np.array([self.mm.npages]), "the whole mm"
        elif op == "invalidate_page":
            start = np.asarray(args["pages"], dtype=np.int64)
            end, what = start + 1, f"{start.size} pages, one by one"
        else:
            ranges = args["ranges"]
            if ranges.owner is subscriber:  # its own migration (MIGRATE, EXCLUSIVE): it may skip the event
                return
            start, end = ranges.start, ranges.end
            what = f"{ranges.event.name} of {describe_ranges(start, end)}"
        who = self.mm.sim.actors.current
        verify_invalidated(self.mm.sim, subscriber, op, start, end, f"{what} of mm '{self.mm.name}', by {who}")

    def invalidate_range_start(self, ranges: NotifierRange) -> bool:
        """mmu_notifier_invalidate_range_start: False if a subscriber refused a non-blockable batch.

        As __mmu_notifier_invalidate_range_start (mm/mmu_notifier.c): the interval subscribers first
        (mn_itree_invalidate), stopping at the first that refuses, in which case no whole-mm subscriber is
        called at all; then every whole-mm subscriber (mn_hlist_invalidate_range_start), and if one of
        those refused, ``invalidate_range_end`` on every one that implements it."""
        ctr = self.mm.sim.host._ctr
        ctr[INVALIDATIONS] += len(ranges)
        ctr[INVALIDATIONS_BY_EVENT + ranges.event] += len(ranges)
        self.invalidate_seq += 1
        results = self.call("invalidate", ranges=ranges, cur_seq=self.invalidate_seq, stop_on_refusal=True)
        if not any(res is False for _, res in results):
            results += self.call("invalidate_range_start", ranges=ranges)
        refused = [name for name, res in results if res is False]
        if not refused:
            return True
        if ranges.blockable:
            raise PluginError(
                f"secondary MMU '{refused[0]}' refused a blockable invalidation "
                f"({ranges.event.name}, {len(ranges)} ranges of mm '{self.mm.name}'): only "
                "non-blockable ranges may be refused"
            )
        ending = {impl.name for impl in self._impls("invalidate_range_end")}
        if ending & set(refused):
            raise PluginError(
                f"secondary MMU '{sorted(ending & set(refused))[0]}' refused invalidate_range_start but "
                "implements invalidate_range_end: a subscriber that can refuse must not implement end"
            )
        if not any(impl.name in refused for impl in self._impls("invalidate")):
            self.invalidate_range_end(ranges)  # the whole-mm subscribers did start: end them
        else:
            self.invalidate_seq += 1  # mn_itree_inv_end
        ctr[INVALIDATIONS_REFUSED] += len(ranges)
        log.warning(
            "secondary MMU '%s' refused a non-blockable invalidation (%s, pages [%d, %d) of mm '%s'%s): the "
            "operation was not done", refused[0], ranges.event.name, ranges.start[0], ranges.end[0], self.mm.name,
            f" and {len(ranges) - 1} more ranges" if len(ranges) > 1 else "",
        )  # fmt: skip
        return False

    def invalidate_range_end(self, ranges: NotifierRange) -> None:
        self.call("invalidate_range_end", ranges=ranges)
        self.invalidate_seq += 1

    def invalidate_page(self, pages: np.ndarray, event: Event) -> None:
        """__mmu_notifier_invalidate_page (2.6.27) for each of ``pages``: every subscriber implementing
        ``invalidate_page`` is told, one page at a time (one call per batch here). Counted as invalidations
        of ``event``, the event the same path raises today, so that per-event counts stay comparable."""
        pages = frozen(np.asarray(pages, dtype=np.int64))
        ctr = self.mm.sim.host._ctr
        ctr[INVALIDATIONS] += pages.size
        ctr[INVALIDATIONS_BY_EVENT + event] += pages.size
        ctr[INVALIDATE_PAGE_CALLS] += pages.size
        self.call("invalidate_page", mm=self.mm, pages=pages)

    def young(self, op: str, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """OR of every subscriber's answer to ``clear_flush_young``/``clear_young``/``test_young``, per
        range (``test_young`` asks about single pages: ranges of one page).

        With invariant checks on, each answer is compared with what the framework's access kernel saw
        through the subscriber's entries before the call (its shadow accessed array), and after a clearing
        op the subscriber's own accessed bits must read clear (``invariants.verify_young``); after
        ``test_young`` they must read as before the call (``invariants.verify_test_young``). A clearing op
        consumes the accesses: the framework clears the shadow over the ranges just before the call (only
        the framework writes the shadow; no plugin call clears it)."""
        sim = self.mm.sim
        verify = sim.engine.check_invariants
        clearing = op != "test_young"
        start, end = frozen(start), frozen(end)  # read again after the plugins had them
        truth, before = {}, {}
        for impl in self._impls(op):
            if verify and getattr(impl.plugin, "_spte", _NO_TABLE).size:  # the framework's view of its table
                sub = impl.plugin  # the truth, taken before the op (which consumes the accesses) can touch it
                truth[impl.name] = sub._consume_shadow(start, end) if clearing else sub.shadow_young(start, end)
                if not clearing:  # test_young must leave the plugin's own bits as it found them
                    before[impl.name] = (sub._sflags[start] & S_ACCESSED) != 0
        young = np.zeros(start.size, dtype=bool)
        args = {"mm": self.mm, "start": start, "end": end} if clearing else {"mm": self.mm, "pages": start}
        for name, res in self.call(op, **args):
            arr = np.asarray(res)
            if arr.shape != young.shape:
                raise PluginError(
                    f"secondary MMU '{name}' returned {arr.shape} from {op}; expected one bool per range {young.shape}"
                )
            arr = arr.astype(bool, copy=False)
            sub = self._pm.get_plugin(name)
            if name in truth:
                kept = sub._accessed_left(start, end) if clearing else None
                # An MMU that says it cannot see its accesses (``young`` False: 2.6.27's EPT) may answer
                # "old" for what it accessed, as clear_young may; answering "young" falsely is still a lie.
                checked = op if getattr(sub, "_young", True) else "clear_young"  # as the class said at construction
                verify_young(sim, sub, checked, start, end, truth[name], arr, kept)
                if name in before:
                    verify_test_young(sim, sub, start, before[name])
            young |= arr
        return young

    def release(self) -> None:
        """mmu_notifier_release: every subscriber drops the mm, then leaves the chain. Interval
        subscribers get an ``invalidate`` of the whole mm with event RELEASE (mn_itree_release)."""
        whole = NotifierRange(self.mm, np.array([0]), np.array([self.mm.npages]), Event.RELEASE)
        if self._impls("invalidate"):
            ctr = self.mm.sim.host._ctr
            ctr[INVALIDATIONS] += 1
            ctr[INVALIDATIONS_BY_EVENT + Event.RELEASE] += 1
        self.invalidate_seq += 1
        self.call("invalidate", ranges=whole, cur_seq=self.invalidate_seq)
        self.invalidate_seq += 1
        self.call("release", mm=self.mm)
        for sub in list(self._pm.get_plugins()):
            self._pm.unregister(sub)
        self._changed()
        self.mm._set_flag(MM_HAS_NOTIFIERS, False)


def unique_name(pm: pluggy.PluginManager, name: str) -> str:
    """``name``, or ``name#2``, ``name#3``, ... if ``pm`` holds it already (two devices of one kind on an mm)."""
    suffix = 1
    while pm.has_plugin(name if suffix == 1 else f"{name}#{suffix}"):
        suffix += 1
    return name if suffix == 1 else f"{name}#{suffix}"


def _implements(subscriber: object, op: str) -> bool:
    fn = getattr(subscriber, op, None)
    return fn is not None and hasattr(fn, f"{PROJECT}_impl")


def _clip(ranges: NotifierRange, region: tuple[int, int]) -> NotifierRange | None:
    """The part of ``ranges`` inside ``region`` [lo, hi), or None if nothing overlaps."""
    lo, hi = region
    hit = (ranges.start < hi) & (ranges.end > lo)
    if not hit.any():
        return None
    if hit.all() and ranges.start.min() >= lo and ranges.end.max() <= hi:
        return ranges
    return NotifierRange(ranges.mm, np.maximum(ranges.start[hit], lo), np.minimum(ranges.end[hit], hi),
                         ranges.event, ranges.blockable, ranges.owner)  # fmt: skip


def _label(subscriber: object) -> str:
    return str(getattr(subscriber, "label", None) or type(subscriber).__name__)
