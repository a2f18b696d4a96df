"""The invariants mmu notifiers exist to guarantee, checked over the whole host in numba.

* coherence:    no secondary entry points at a frame the primary table no longer maps at that page;
* isolation:    no secondary entry points at a frame that is free or belongs to another mm, or lets
                its device write to a shared (KSM) frame;
* integrity:    every page's content (its token) is where its PTE says: in its frame or its swap slot;
* pin safety:   no pinned frame is free, and every pin is held by a secondary entry that says so;
* conservation: free + used frames = total, the free lists agree with the frames, swap slots match
                swap PTEs one to one, a shared frame's count of sharers matches the PTEs mapping it.
                Structure: a THP (an aligned 2 MiB region) is flagged ``P_HUGE`` on all its pages or on
                none, and is mapped by the 512 frames of one pageblock in order.
* accessed:     a secondary MMU's answer to a young op is whether its entries in the range were
                accessed, as the framework's access kernel recorded it in the MMU's shadow accessed array
                (``SecondaryMMU.accessed``, which the plugin reads but does not write); and after
                ``clear_young``/``clear_flush_young`` returns, its own accessed bits in the ranges read
                clear (checked at each call, by ``verify_young``). An MMU that calls everything young keeps
                cold pages from reclaim, one that calls nothing young hides hot pages from it, one that
                never clears answers young forever.
* permission:   a subscribed secondary MMU's entry that maps the PTE's own frame is no more permissive than
                the PTE: not writable where the VMA is read-only or the frame is a shared (KSM) frame, not
                present where the PTE is PROT_NONE (mprotect, or NUMA balancing's hinting entry). An entry
                whose frame is not the PTE's is stale whatever its bits: coherence (or isolation) wins.
                A pinning device is never told about protection changes (the 2008 design), so only
                subscribers are judged.

Every message names what was observed (the secondary MMU holding the entry, or the page or frame) and the
culprit: the component and hook, or the mm operation, that made the change which broke the invariant. The
framework records, for every page, the last mm operation that changed its PTE under an invalidation and
who was running it (``Actors.who_changed``); a secondary that was notified of that change and kept its
entry is the culprit of a stale entry, the operation is the culprit when nothing was told.

A check counts each violating entry or page once per check, so a violation is counted again for every
tick it persists. With ``engine.check_accesses`` the access kernel also counts, as it happens, every
access through a secondary entry whose frame is not the page's.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .frames import FREE, NFREE, ORPHAN, PAGEBLOCK_SHIFT, PB_NFREE, PB_SIZE, SHARED, WORDS
from .kernel import U, count_at_most, count_set, kernel
from .pagebits import (
    HUGE_PAGES,
    P_HUGE,
    P_PROTNONE,
    P_READ,
    P_VMA,
    P_WRITE,
    PTE_NONE,
    S_ACCESSED,
    S_WRITABLE,
    SH_PINNED,
)
from .swapdev import REG_USED, SLOT_FREE

if TYPE_CHECKING:
    from .simulation import Simulation


class InvariantViolation(RuntimeError):
    """Raised by a run with engine.stop_on_violation when an invariant breaks."""


KINDS = ("coherence", "isolation", "integrity", "pin", "conservation", "accessed", "permission")
COHERENCE, ISOLATION, INTEGRITY, PIN, CONSERVATION, ACCESSED, PERMISSION = range(len(KINDS))

# What exactly a noted violation is (examples[kind, 2]), for its message.
(W_STALE, W_FOREIGN, W_WRONG_OWNER, W_SLOT_OWNER, W_CONTENT_FRAME, W_CONTENT_SLOT, W_CONTENT_NONE, W_PIN_COUNT,
 W_PIN_FREE, W_ORPHAN, W_BAD_KEY, W_FREE_BITS, W_PB_NFREE, W_MAPPED, W_SHARERS, W_TOTAL, W_SLOTS, W_THP_PART,
 W_THP_FRAMES, W_PERM_WRITE, W_PERM_SHARED, W_PERM_NONE, W_NO_FRAME) = range(23)  # fmt: skip


@kernel
def _note(counts, examples, kind, a, b, what):
    if counts[kind] == 0:
        examples[kind, 0] = a
        examples[kind, 1] = b
        examples[kind, 2] = what
    counts[kind] += 1


@kernel(inline=True)
def _triple_hash(key, place, token, salt):
    """A (page, frame or slot, content) triple as 64 scrambled bits (splitmix64's finalizer)."""
    x = ((U(key) << U(32)) | U(place)) ^ (U(token) * U(0x9E3779B97F4A7C15)) ^ salt
    x = (x ^ (x >> U(30))) * U(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> U(27))) * U(0x94D049BB133111EB)
    return x ^ (x >> U(31))


@kernel
def _rmap_sums_agree(pte, ptoken, fkey, ftoken, skey, stoken, salt):
    """Whether every present or swapped page names a frame or slot that names it back with its content,
    judged from both sides in order, without a random lookup: the sum of the triples' hashes over the page
    table must equal the sum over the frames in use (and over the slots in use). A wrong rmap entry or
    content changes one sum and not the other; the sums then collide with probability about 2**-64 (per
    check: the salt changes every tick). Returns (agree, present PTEs, swap PTEs)."""
    nframes = fkey.size
    nslots = skey.size
    by_pages = U(0)
    by_owners = U(0)
    present = swap_ptes = 0
    odd = False  # a PTE out of range, or content on a page never written: let the walk name it
    # Without branches on the entries (whether a page is present, swapped or neither is random): every
    # triple is hashed and the ones that do not count are added as 0.
    for key in range(pte.size):
        e = pte[key]
        token = ptoken[key]
        in_frame = e >= 0
        in_slot = e < PTE_NONE
        place = e if in_frame else nframes - 2 - e  # slots are numbered after the frames
        h = _triple_hash(key, place, token, salt)
        by_pages += h if in_frame or in_slot else U(0)
        present += in_frame
        swap_ptes += in_slot
        odd |= (in_frame and e >= nframes) or (in_slot and -2 - e >= nslots) or (e == PTE_NONE and token != 0)
    for f in range(nframes):
        h = _triple_hash(fkey[f], f, ftoken[f], salt)
        by_owners += h if fkey[f] >= 0 else U(0)
    for s in range(nslots):
        h = _triple_hash(skey[s] - 1, nframes + s, stoken[s], salt)  # a used slot holds its page's key + 1
        by_owners += h if skey[s] != SLOT_FREE else U(0)
    return not odd and by_pages == by_owners, present, swap_ptes


@kernel
def _walk_pages(pte, ptoken, fkey, ftoken, skey, stoken, counts, examples):
    """The rmap and content checks page by page (a random lookup per page), counting and naming each
    violation. Returns (present PTEs, PTEs of shared frames, swap PTEs)."""
    nframes = fkey.size
    nslots = skey.size
    present = 0
    shared_ptes = 0
    swap_ptes = 0
    for key in range(pte.size):
        e = pte[key]
        if e >= 0:
            if e < nframes and fkey[U(e)] <= SHARED:  # a KSM page: many PTEs, counted against its sharers
                shared_ptes += 1
            else:
                present += 1
            if e >= nframes or (fkey[U(e)] != key and fkey[U(e)] > SHARED):
                _note(counts, examples, CONSERVATION, key, e, W_WRONG_OWNER)
            elif ftoken[U(e)] != ptoken[U(key)]:
                _note(counts, examples, INTEGRITY, key, e, W_CONTENT_FRAME)
        elif e != PTE_NONE:
            slot = -2 - e
            swap_ptes += 1
            if slot >= nslots or skey[U(slot)] != key + 1:
                _note(counts, examples, CONSERVATION, key, e, W_SLOT_OWNER)
            elif stoken[U(slot)] != ptoken[U(key)]:
                _note(counts, examples, INTEGRITY, key, e, W_CONTENT_SLOT)
        elif ptoken[U(key)] != 0:
            _note(counts, examples, INTEGRITY, key, e, W_CONTENT_NONE)
    return present, shared_ptes, swap_ptes


@kernel
def _check_host(pt, ft, sw, expected_pins, any_shared, salt, counts, examples):
    """Everything but the secondary tables. Walks pages, frames and slots in order. The rmap and content
    checks (does each PTE's frame or slot name the page back, with the page's content?) are first judged
    by ``_rmap_sums_agree``, in order; only if the sums disagree, or shared (KSM) frames exist (one frame,
    many PTEs), does ``_walk_pages`` look each PTE's frame up to count and name the violations.
    Consistency the other way round follows from the counts: if every present PTE's frame names that PTE
    back and as many frames are in use as PTEs are present, the reverse map is exact (and likewise for
    swap slots)."""
    pte, ptoken = pt.pte, pt.token
    fkey, ftoken, fpin, pb, bits, node = ft.key, ft.token, ft.pin, ft.pb, ft.bits, ft.node
    skey, stoken, sreg = sw.key, sw.token, sw.reg
    nframes = fkey.size
    nslots = skey.size
    agree, present, swap_ptes = _rmap_sums_agree(pte, ptoken, fkey, ftoken, skey, stoken, salt)
    shared_ptes = 0
    if any_shared or not agree:
        present, shared_ptes, swap_ptes = _walk_pages(pte, ptoken, fkey, ftoken, skey, stoken, counts, examples)
    mapped = 0
    orphans = 0
    shared = 0
    sharing = 0
    pinning = expected_pins.size > 0  # empty when nothing is pinned anywhere: no pins to account
    for b in range(pb.shape[0]):
        lo = b << PAGEBLOCK_SHIFT
        nfree = 0
        for w in range(WORDS):
            word = np.uint64(0)
            for off in range(w * 64, min((w + 1) * 64, pb[b, PB_SIZE])):
                f = lo + off
                k = fkey[f]
                if pinning and fpin[f] != expected_pins[f]:
                    _note(counts, examples, PIN, f, fpin[f], W_PIN_COUNT)
                if k == FREE:
                    nfree += 1
                    word |= np.uint64(1) << np.uint64(off & 63)
                    if fpin[f] > 0:
                        _note(counts, examples, PIN, f, k, W_PIN_FREE)
                elif k == ORPHAN:
                    orphans += 1
                    if fpin[f] == 0:
                        _note(counts, examples, CONSERVATION, f, k, W_ORPHAN)
                elif k >= 0:
                    mapped += 1
                elif k <= SHARED:
                    shared += 1
                    sharing += SHARED + 1 - k
                else:
                    _note(counts, examples, CONSERVATION, f, k, W_BAD_KEY)
            if word != bits[b, w]:
                _note(counts, examples, CONSERVATION, lo + w * 64, 0, W_FREE_BITS)
        if nfree != pb[b, PB_NFREE]:
            _note(counts, examples, CONSERVATION, lo, nfree, W_PB_NFREE)
    if mapped != present:
        _note(counts, examples, CONSERVATION, mapped, present, W_MAPPED)
    if sharing != shared_ptes:
        _note(counts, examples, CONSERVATION, sharing, shared_ptes, W_SHARERS)
    free = 0
    for n in range(node.shape[0]):
        free += node[n, NFREE]
    if free + mapped + orphans + shared != nframes:
        _note(counts, examples, CONSERVATION, free, mapped + orphans + shared, W_TOTAL)
    used_slots = 0
    free_wrong = 0
    sfree = sw.free
    for s in range(nslots):  # no branch: the loop vectorizes
        used = skey[s] != SLOT_FREE
        used_slots += used
        free_wrong += used == (((sfree[s >> 6] >> U(s & 63)) & U(1)) != 0)  # the free bitmap says otherwise
    if used_slots != sreg[REG_USED] or used_slots != swap_ptes or free_wrong:
        _note(counts, examples, CONSERVATION, used_slots, swap_ptes, W_SLOTS)
    _check_thp(pte, pt.flags, pt.mm_base, counts, examples)


@kernel
def _check_thp(pte, pflags, mm_base, counts, examples):
    """Every aligned 2 MiB region of every mm is flagged P_HUGE on all its pages or on none; a flagged one
    is mapped by the frames of one pageblock, in order."""
    for mm in range(mm_base.size - 1):
        base = mm_base[mm]
        for first in range(base, mm_base[mm + 1] - HUGE_PAGES + 1, HUGE_PAGES):
            flagged = 0
            for k in range(first, first + HUGE_PAGES):  # no branch: the loop vectorizes
                flagged += (pflags[k] & P_HUGE) != 0
            if flagged == 0:
                continue
            if flagged != HUGE_PAGES:
                _note(counts, examples, CONSERVATION, first, flagged, W_THP_PART)
                continue
            f0 = pte[first]
            ok = f0 >= 0 and f0 % HUGE_PAGES == 0
            for i in range(HUGE_PAGES):
                ok &= pte[first + i] == f0 + i
            if not ok:
                _note(counts, examples, CONSERVATION, first, f0, W_THP_FRAMES)


@kernel(inline=True)
def _forbidden(pfl, sfl):
    """Whether an entry with bits ``sfl`` grants more than a PTE with flags ``pfl`` (the shared-frame case
    aside): writable where the VMA is read-only, or present where the PTE is PROT_NONE or unreadable."""
    no_access = ((pfl & P_PROTNONE) != 0) | ((pfl & (P_VMA | P_READ)) != (P_VMA | P_READ))
    return no_access | (((sfl & S_WRITABLE) != 0) & ((pfl & P_WRITE) == 0))  # no branch: the loop vectorizes


@kernel
def _check_secondary(pt, ft, mm, spte, sflags, shadow, any_shared, expected_pins, check_perm, counts, examples):
    """A secondary table against the primary: an entry whose frame is the PTE's is coherent (and, the
    host check having verified the rmap, isolated); only the rare other entry is looked up further.
    ``any_shared``: whether any frame is a shared (KSM) one; if none is, a coherent entry needs no look at
    its frame (a random load per entry, most of this check's time otherwise). ``check_perm``: also judge
    each coherent entry's permissions against the PTE's (for a subscriber, which is told of changes).
    Pins are counted by the framework's own record of each entry (``shadow``'s SH_PINNED), and a frame
    number beyond the host's frames (the plugin's table is the plugin's to write) is an isolation violation,
    never an index."""
    pte, pflags, mm_base, fkey = pt.pte, pt.flags, pt.mm_base, ft.key
    base = mm_base[mm]
    count_pins = expected_pins.size > 0
    if not count_pins and not any_shared:  # the common case first: is every entry the PTE's frame?
        stray = 0
        for p in range(spte.size):  # no branch: the loop vectorizes
            f = spte[p]
            stray += (f >= 0) & ((pte[base + p] != f) | (check_perm & _forbidden(pflags[base + p], sflags[p])))
        if stray == 0:
            return
    for p in range(spte.size):
        f = spte[p]
        if f < 0:
            continue
        if f >= fkey.size:
            _note(counts, examples, ISOLATION, p, f, W_NO_FRAME)
            continue
        if count_pins and shadow[p] & SH_PINNED:
            expected_pins[f] += 1
        if pte[base + p] == f:
            pfl = pflags[base + p]
            sfl = sflags[p]
            if check_perm and ((pfl & P_PROTNONE) != 0 or (pfl & (P_VMA | P_READ)) != (P_VMA | P_READ)):
                _note(counts, examples, PERMISSION, p, f, W_PERM_NONE)
            elif check_perm and sfl & S_WRITABLE and not pfl & P_WRITE:
                _note(counts, examples, PERMISSION, p, f, W_PERM_WRITE)
            elif any_shared and sfl & S_WRITABLE and fkey[f] <= SHARED:  # a write would reach every sharer
                _note(counts, examples, PERMISSION, p, f, W_PERM_SHARED)
            continue
        owner = fkey[f]
        if owner == FREE or (owner >= 0 and np.searchsorted(mm_base, owner, side="right") - 1 != mm):
            _note(counts, examples, ISOLATION, p, f, W_FOREIGN)
        else:
            _note(counts, examples, COHERENCE, p, f, W_STALE)


@dataclass
class Report:
    """Violations found by one check: counts by kind and a message for the first of each kind."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(KINDS), dtype=np.int64))
    messages: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.counts.any())


def check(sim: "Simulation") -> Report:
    host = sim.host
    report = Report()
    pinning = bool(host._ft.pin.any()) or any(count_set(s._accessed, SH_PINNED) for s in sim.secondaries)
    expected_pins = np.zeros(host._ft.key.size if pinning else 0, dtype=np.int32)  # device memory too
    shared = bool(count_at_most(host._ft.key, SHARED))
    for sec in sim.secondaries:
        _check_table(sim, sec, shared, expected_pins, report)
    counts = np.zeros(len(KINDS), dtype=np.int64)
    examples = np.zeros((len(KINDS), 3), dtype=np.int64)
    _check_host(host._pt, host._ft, host._sw, expected_pins, shared, np.uint64(sim.tick), counts, examples)
    report.counts += counts
    for kind in np.flatnonzero(counts):
        a, b, what = (int(x) for x in examples[kind])
        report.messages.append(f"{KINDS[kind]}: {_host_story(sim, what, a, b)} ({counts[kind]} found)")
    return report


def check_table(sim: "Simulation", sec) -> Report:
    """One secondary MMU's table against the primary (coherence, isolation, permission), alone: for the
    moment a plugin's own code may have installed entries (after its ``host_tick``), rather than at the end
    of the tick, when an entry installed and dropped in between would be gone."""
    report = Report()
    _check_table(sim, sec, bool(count_at_most(sim.host._ft.key, SHARED)), np.zeros(0, dtype=np.int32), report)
    return report


def _check_table(sim: "Simulation", sec, shared: bool, expected_pins: np.ndarray, report: Report) -> None:
    host = sim.host
    counts = np.zeros(len(KINDS), dtype=np.int64)
    examples = np.zeros((len(KINDS), 3), dtype=np.int64)
    subscribed = _subscribed(sec)
    _check_secondary(host._pt, host._ft, sec.mm.index, sec._spte, sec._sflags, sec._accessed, shared, expected_pins,
                     subscribed, counts, examples)  # fmt: skip
    report.counts += counts
    for kind in np.flatnonzero(counts):
        page, frame, what = (int(x) for x in examples[kind])
        report.messages.append(
            f"{KINDS[kind]}: {_entry_story(sim, sec, page, frame, what, subscribed)} ({counts[kind]} entries)"
        )


def _subscribed(sec) -> bool:
    return sec in sec.mm.chain.subscribers()


def _told(sim: "Simulation", sec, page: int) -> bool:
    """Whether ``sec`` was told of the last recorded change of its ``page``: subscribed to the chain, the
    page inside the ranges it hears (an interval subscriber only its region), and a change recorded."""
    lo, hi = getattr(sec, "region", (0, sec.mm.npages))
    return _subscribed(sec) and lo <= page < hi and sim.actors.who_changed(sec.mm.base + page) is not None


def _invalidate_hook(sec) -> str:
    return "invalidate" if getattr(sec, "_interval", False) else "invalidate_range_start"


def _last_change(sim: "Simulation", key: int) -> str:
    who = sim.actors.who_changed(key)
    return f"last changed by {who}" if who else "never changed by an mm operation"


def _entry_story(sim: "Simulation", sec, page: int, frame: int, what: int, subscribed: bool) -> str:
    """What is wrong with ``sec``'s entry for ``page`` and whose doing it is."""
    key = sec.mm.base + page
    pte = int(sim.host._pt.pte[key])
    change = _last_change(sim, key)
    told = f"{sec.label} was told ({_invalidate_hook(sec)}) and kept its entry"
    if what == W_NO_FRAME:
        return (f"{sec.label} maps page {page} to frame {frame}, which is no frame of the host (frames 0.."
                f"{sim.host._ft.key.size - 1}). Culprit: {sec.label}, which wrote its table (spte) itself")  # fmt: skip
    if what in (W_STALE, W_FOREIGN):
        story = f"{sec.label} maps page {page} to frame {frame}, {_frame_story(sim, sec.mm, page, frame)}"
        story += f"; the PTE was {change}"
        if subscribed and _told(sim, sec, page):
            return f"{story}. Culprit: {sec.label} ({told}, or installed it without the retry rule)"
        if subscribed:
            return (f"{story}. Culprit: {sec.label}, which installed an entry its notifier was never asked to drop "
                    "(a frame the PTE did not map when it installed it)")  # fmt: skip
        return (f"{story}. Culprit: that change, made under {sec.label}'s pin: a pinning device is not subscribed and "
                "is never told")  # fmt: skip
    pfl = int(sim.host._pt.flags[key])
    if what == W_PERM_SHARED:
        wrong = "writable, but frame is a shared (KSM) frame: a write would reach every page sharing it"
    elif what == W_PERM_WRITE:
        wrong = "writable, but the VMA is read-only"
    elif pfl & P_PROTNONE:
        wrong = "present, but the PTE is PROT_NONE (a NUMA hinting entry)"
    else:
        wrong = "present, but the VMA forbids access (PROT_NONE)"
    return (f"{sec.label} maps page {page} (frame {frame}, PTE {_pte_story(pte)}, flags {_flag_story(pfl)}) "
            f"{wrong}; the PTE was {change}. Culprit: {sec.label} ({told})")  # fmt: skip


def _flag_story(pfl: int) -> str:
    names = [n for n, b in (("vma", P_VMA), ("read", P_READ), ("write", P_WRITE), ("protnone", P_PROTNONE),
                            ("huge", P_HUGE)) if pfl & b]  # fmt: skip
    return "+".join(names) or "none"


def _frame_story(sim: "Simulation", mm, page: int, frame: int) -> str:
    owner = int(sim.host._ft.key[frame])
    pte = int(sim.host._pt.pte[mm.base + page])
    where = f"while the primary table has {_pte_story(pte)}"
    if owner == FREE:
        return f"which is free, {where}"
    if owner == ORPHAN:
        return f"which only a pin keeps alive, {where}"
    if owner <= SHARED:
        return f"a shared (KSM) frame of {SHARED + 1 - owner} pages, {where}"
    other = sim.mm_of_key(owner)
    return f"which holds page {owner - other.base} of mm '{other.name}', {where}"


def _pte_story(pte: int) -> str:
    if pte >= 0:
        return f"frame {pte}"
    if pte == PTE_NONE:
        return "no page"
    return f"swap slot {-2 - pte}"


def _stale_writers(sim: "Simulation", key: int, frame: int) -> list[str]:
    """The secondary MMUs whose entries could have written the wrong content of page ``key`` (or of its frame
    ``frame``): an entry for the page whose frame is not the page's, or an entry of another page on that frame.
    A write through such an entry lands in whatever the frame holds now, and the page's own copy goes stale."""
    pte = sim.host._pt.pte
    found = []
    for sec in sim.secondaries:
        if not sec._spte.size:
            continue
        page = key - sec.mm.base
        if 0 <= page < sec._spte.size and sec._spte[page] >= 0 and sec._spte[page] != pte[key]:
            found.append(f"{sec.label}, which still maps page {page} to frame {int(sec._spte[page])} (stale) and wrote "
                         "through it")  # fmt: skip
            continue
        if frame >= 0:
            on_frame = np.flatnonzero(sec._spte == frame)
            stale = [int(p) for p in on_frame if pte[sec.mm.base + p] != frame]
            if stale:
                found.append(f"{sec.label}, whose entry for page {stale[0]} still maps frame {frame} (stale) and "
                             "wrote through it")  # fmt: skip
    return found


def _page(sim: "Simulation", key: int) -> str:
    mm = sim.mm_of_key(key)
    return f"page {key - mm.base} of mm '{mm.name}'"


def _host_story(sim: "Simulation", what: int, a: int, b: int) -> str:
    host = sim.host
    if what in (W_PIN_COUNT, W_PIN_FREE):
        holders = [s.label for s in sim.secondaries if np.any((s._spte == a) & ((s._accessed & SH_PINNED) != 0))]
        return (
            f"frame {a} has pin count {int(host._ft.pin[a])} and key {int(host._ft.key[a])}, but "
            f"{'entries of ' + ', '.join(holders) if holders else 'no secondary entry'} account for its pins. "
            f"Culprit: {', '.join(holders) if holders else 'whoever pinned it'} (pins are taken and released "
            "only with a secondary entry)"
        )
    if what in (W_CONTENT_FRAME, W_CONTENT_SLOT, W_CONTENT_NONE):
        held = (f"frame {b} holds content {int(host._ft.token[b])}" if what == W_CONTENT_FRAME
                else f"swap slot {-2 - b} holds content {int(host._sw.token[-2 - b])}" if what == W_CONTENT_SLOT
                else "it has no page at all")  # fmt: skip
        story = (f"{_page(sim, a)} should hold content {int(host._pt.token[a])} (its last write), but {held}: the "
                 "data was lost or overwritten")  # fmt: skip
        writers = _stale_writers(sim, a, b if what == W_CONTENT_FRAME else -1)
        if writers:
            return f"{story}. Culprit: {'; '.join(writers)}"
        return f"{story}. The PTE was {_last_change(sim, a)}: culprit"
    if what == W_WRONG_OWNER:
        return (
            f"{_page(sim, a)} maps frame {b}, but the frame's reverse map names key {int(host._ft.key[b])}: "
            f"two pages on one frame, or a frame reused while mapped. The PTE was {_last_change(sim, a)}: culprit"
        )
    if what == W_SLOT_OWNER:
        return (f"{_page(sim, a)} is in swap slot {-2 - b}, but the slot belongs to another page or is free. "
                f"The PTE was {_last_change(sim, a)}: culprit")  # fmt: skip
    if what == W_THP_PART:
        return (f"the THP at {_page(sim, a)} is flagged huge on {b} of its {HUGE_PAGES} pages (all or none); "
                f"it was {_last_change(sim, a)}: culprit")  # fmt: skip
    if what == W_THP_FRAMES:
        return (f"the THP at {_page(sim, a)} is not mapped by one pageblock in order (first frame {b}); "
                f"it was {_last_change(sim, a)}: culprit")  # fmt: skip
    stories = {
        W_ORPHAN: f"frame {a} is an orphan (kept only by a pin) but has no pin: it should have been freed",
        W_BAD_KEY: f"frame {a} has key {b}, which names no page, free state or sharing count",
        W_FREE_BITS: f"the free bitmap of the pageblock holding frame {a} disagrees with the frames' keys",
        W_PB_NFREE: f"the pageblock at frame {a} counts its free frames wrong ({b} are free)",
        W_MAPPED: f"{a} frames are in use by a page but {b} PTEs are present",
        W_SHARERS: f"shared (KSM) frames count {a} sharers but {b} PTEs map them",
        W_TOTAL: f"{a} free frames and {b} in use do not add up to the {host._ft.key.size} frames",
        W_SLOTS: f"{a} swap slots are in use but {b} PTEs are swap entries (or the device's count or its free-slot "
        "bitmap disagrees)",
    }
    return (
        f"{stories.get(what, f'accounting mismatch ({a}, {b})')}. Culprit: the framework's frame accounting "
        f"(ran last: {sim.actors.current})"
    )


@kernel
def _mapped_in(spte, start, end, first):
    """Entries of ``spte`` left in the ranges [start[r], end[r]); ``first[0]`` gets the first such page."""
    left = 0
    for r in range(start.size):
        for p in range(start[r], end[r]):
            if spte[p] >= 0:
                if left == 0:
                    first[0] = p
                left += 1
    return left


def verify_invalidated(sim: "Simulation", subscriber, op: str, start: np.ndarray, end: np.ndarray,
                       what: str) -> None:  # fmt: skip
    """The postcondition of an accepted invalidation, judged the moment ``subscriber`` returns from ``op``
    (``invalidate_range_start``, ``invalidate``, ``invalidate_page``, ``release``): none of its entries maps a
    page of the ranges [start, end). A driver that defers its unmap, tells the OOM reaper "done" without
    zapping, or keeps an entry and drops it before anyone looks, is caught here rather than never: each entry
    left counts as a ``coherence`` violation (the primary mapping is about to change under it). ``what``
    describes the invalidation (its event, ranges and the operation that raised it)."""
    spte = subscriber._spte
    if not spte.size:
        return
    first = np.zeros(1, dtype=np.int64)
    left = _mapped_in(spte, np.ascontiguousarray(start, dtype=np.int64), np.ascontiguousarray(end, dtype=np.int64),
                      first)  # fmt: skip
    if not left:
        return
    page = int(first[0])
    report = Report()
    report.counts[COHERENCE] = left
    label = subscriber.label
    message = (f"coherence: {label} returned from {op} ({what}) still mapping {left} pages of it (first: page {page}, "
               f"frame {int(spte[page])}): the primary mapping is about to change under them. Culprit: {label} in "
               f"{op} (it must drop every entry in the ranges before returning)")  # fmt: skip
    if not any(m.startswith(f"coherence: {label} returned from {op} ") for m in sim.violation_messages):
        report.messages.append(message)  # once per plugin and op; every entry is counted
    sim.report_violations(report)


def verify_install(sim: "Simulation", secondary, page: int) -> None:
    """A fault through ``secondary`` on ``page`` slept after resolving its frame, the host changed the page
    meanwhile, and the retry rule let the fault install the frame it resolved: the entry is stale from the
    moment it exists. The subscriber's invalidation did not move the fault side's sequence (no
    ``end_invalidate`` bump, no ``set_seq``), or its fault path read the sequence after resolving the page
    (the mmu_interval_read_begin misuse). One ``coherence`` violation, reported as it happens."""
    frame = int(secondary._spte[page])
    report = Report()
    report.counts[COHERENCE] = 1
    message = (f"coherence: {secondary.label} installed frame {frame} for page {page} after its fault slept while "
               f"the page changed (the PTE was {_last_change(sim, secondary.mm.base + page)}; it now has "
               f"{_pte_story(int(sim.host._pt.pte[secondary.mm.base + page]))}), and its sequence check did not "
               f"make the fault retry. Culprit: {secondary.label} (its invalidation must move the sequence the fault "
               "read before resolving the page: end_invalidate / set_seq)")  # fmt: skip
    if not any(m.startswith(f"coherence: {secondary.label} installed frame") for m in sim.violation_messages):
        report.messages.append(message)
    sim.report_violations(report)


def verify_test_young(sim: "Simulation", subscriber, pages: np.ndarray, before: np.ndarray) -> None:
    """``test_young`` looks and does not age (khugepaged and reclaim call it to look): ``subscriber``'s own
    accessed bits of ``pages`` must read after the call as ``before`` it; each page changed is an
    ``accessed`` violation naming the plugin."""
    after = (subscriber._sflags[pages] & S_ACCESSED) != 0
    changed = np.flatnonzero(after != before)
    if not changed.size:
        return
    report = Report()
    report.counts[ACCESSED] = int(changed.size)
    page = int(pages[changed[0]])
    message = (f"accessed: {subscriber.label} changed the accessed bits of {changed.size} pages in test_young "
               f"(first: page {page}, {'cleared' if before[changed[0]] else 'set'}): test_young only looks, it "
               f"does not age. Culprit: {subscriber.label} in test_young")  # fmt: skip
    if not any(m.startswith(f"accessed: {subscriber.label} changed the accessed bits") for m in sim.violation_messages):
        report.messages.append(message)
    sim.report_violations(report)


def verify_young(sim: "Simulation", subscriber, op: str, start: np.ndarray, end: np.ndarray, truth: np.ndarray,
                 answer: np.ndarray, kept: np.ndarray | None) -> None:  # fmt: skip
    """Judge a secondary MMU's young op over ranges [start, end): its ``answer`` against ``truth``, whether
    the framework's access kernel saw an access through its entries there since they were last cleared
    (the shadow accessed array, out of the plugin's reach); and, for ``clear_young``/``clear_flush_young``,
    its postcondition: the plugin's own accessed bits in the ranges read clear after the call (``kept``,
    per range whether they do not, from ``SecondaryMMU._accessed_left``; None for ``test_young``). A
    mismatch is an ``accessed`` violation naming the plugin and the op."""
    lied = np.flatnonzero(answer & ~truth)
    hid = np.flatnonzero(truth & ~answer) if op != "clear_young" else lied[:0]  # clear_young may err toward old
    kept = np.flatnonzero(kept) if kept is not None else lied[:0]
    if not lied.size and not hid.size and not kept.size:
        return
    hid_page = 0
    if hid.size:
        r = int(hid[0])
        mapped = np.flatnonzero(subscriber._spte[start[r] : end[r]] >= 0)
        hid_page = int(start[r]) + (int(mapped[0]) if mapped.size else 0)
    lied_at = (int(start[lied[0]]), int(end[lied[0]])) if lied.size else (0, 0)
    kept_at = (int(start[kept[0]]), int(end[kept[0]])) if kept.size else (0, 0)
    report_young(sim, subscriber, op, int(lied.size), lied_at, int(hid.size), hid_page, int(kept.size), kept_at)


def report_young(sim: "Simulation", subscriber, op: str, lied: int, lied_at: tuple[int, int] | int, hid: int,
                 hid_page: int, kept: int, kept_at: tuple[int, int] | int) -> None:  # fmt: skip
    """Report a young op's ``accessed`` violations: ``lied`` ranges answered young that nothing accessed
    (the first ``lied_at``, a range or a page), ``hid`` answered old that were accessed (the first at page
    ``hid_page``), ``kept`` whose accessed bits still read set after a clearing op (the first ``kept_at``)."""
    if not (lied or hid or kept):
        return

    def pages(at: tuple[int, int] | int) -> str:
        lo, hi = at if isinstance(at, tuple) else (at, at + 1)
        return f"pages [{lo}, {hi})"

    report = Report()
    report.counts[ACCESSED] = lied + hid + kept
    parts = []
    if lied:
        parts.append(f"young for {lied} ranges none of its entries was accessed in (first: {pages(lied_at)})")
    if hid:
        parts.append(f"not young for {hid} ranges it accessed (first: page {hid_page}, "
                     f"frame {int(subscriber._spte[hid_page])})")  # fmt: skip
    if kept:
        parts.append(f"but left its accessed bits set in {kept} ranges (first: {pages(kept_at)}): the next call "
                     "will call them young again")  # fmt: skip
    message = (f"accessed: {subscriber.label} answered {op} {' and '.join(parts)}. Culprit: {subscriber.label} "
               f"in {op}")  # fmt: skip
    if not any(m.startswith(message.partition(" for ")[0]) for m in sim.violation_messages):
        report.messages.append(message)  # once per plugin, op and kind of lie; every one is counted
    sim.report_violations(report)
