"""The invariants mmu notifiers exist to guarantee, checked over the whole host in numba.

* coherence:    no secondary entry points at a frame the primary table no longer maps at that page;
* isolation:    no secondary entry points at a frame that is free or belongs to another mm, or lets
                its device write to a shared (KSM) frame;
* integrity:    every page's content (its token) is where its PTE says: in its frame or its swap slot;
* pin safety:   no pinned frame is free, and every pin is held by a secondary entry that says so;
* conservation: free + used frames = total, the free lists agree with the frames, swap slots match
                swap PTEs one to one, a shared frame's count of sharers matches the PTEs mapping it.
* accessed:     a secondary MMU's answer to a young op is the accessed bits of its entries in the
                range, as its accesses set them (checked at each call, by ``verify_young``): an MMU that
                calls everything young keeps cold pages from reclaim, one that calls nothing young
                hides hot pages from it.

A check counts each violating entry or page once per check, so a violation is counted again for every
tick it persists. With ``engine.check_accesses`` the access kernel also counts, as it happens, every
access through a secondary entry whose frame is not the page's.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .frames import FREE, NFREE, ORPHAN, PAGEBLOCK_SHIFT, PB_NFREE, PB_SIZE, SHARED, WORDS
from .kernel import U, kernel
from .pagebits import PTE_NONE, S_PINNED, S_WRITABLE
from .swapdev import REG_USED, SLOT_FREE

if TYPE_CHECKING:
    from .simulation import Simulation

KINDS = ("coherence", "isolation", "integrity", "pin", "conservation", "accessed")
COHERENCE, ISOLATION, INTEGRITY, PIN, CONSERVATION, ACCESSED = range(len(KINDS))


@kernel
def _note(counts, examples, kind, a, b):
    if counts[kind] == 0:
        examples[kind, 0] = a
        examples[kind, 1] = b
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
        h = _triple_hash(skey[s], nframes + s, stoken[s], salt)
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
                _note(counts, examples, CONSERVATION, key, e)
            elif ftoken[U(e)] != ptoken[U(key)]:
                _note(counts, examples, INTEGRITY, key, e)
        elif e != PTE_NONE:
            slot = -2 - e
            swap_ptes += 1
            if slot >= nslots or skey[U(slot)] != key:
                _note(counts, examples, CONSERVATION, key, e)
            elif stoken[U(slot)] != ptoken[U(key)]:
                _note(counts, examples, INTEGRITY, key, e)
        elif ptoken[U(key)] != 0:
            _note(counts, examples, INTEGRITY, key, e)
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
                    _note(counts, examples, PIN, f, fpin[f])
                if k == FREE:
                    nfree += 1
                    word |= np.uint64(1) << np.uint64(off & 63)
                    if fpin[f] > 0:
                        _note(counts, examples, PIN, f, k)
                elif k == ORPHAN:
                    orphans += 1
                    if fpin[f] == 0:
                        _note(counts, examples, CONSERVATION, f, k)
                elif k >= 0:
                    mapped += 1
                elif k <= SHARED:
                    shared += 1
                    sharing += SHARED + 1 - k
                else:
                    _note(counts, examples, CONSERVATION, f, k)
            if word != bits[b, w]:
                _note(counts, examples, CONSERVATION, lo + w * 64, 0)
        if nfree != pb[b, PB_NFREE]:
            _note(counts, examples, CONSERVATION, lo, nfree)
    if mapped != present:
        _note(counts, examples, CONSERVATION, mapped, present)
    if sharing != shared_ptes:
        _note(counts, examples, CONSERVATION, sharing, shared_ptes)
    free = 0
    for n in range(node.shape[0]):
        free += node[n, NFREE]
    if free + mapped + orphans + shared != nframes:
        _note(counts, examples, CONSERVATION, free, mapped + orphans + shared)
    used_slots = 0
    for s in range(nslots):
        used_slots += skey[s] != SLOT_FREE  # no branch: the loop vectorizes
    if used_slots != sreg[REG_USED] or used_slots != swap_ptes:
        _note(counts, examples, CONSERVATION, used_slots, swap_ptes)


@kernel
def _check_secondary(pt, ft, mm, spte, sflags, any_shared, expected_pins, counts, examples):
    """A secondary table against the primary: an entry whose frame is the PTE's is coherent (and, the
    host check having verified the rmap, isolated); only the rare other entry is looked up further.
    ``any_shared``: whether any frame is a shared (KSM) one; if none is, a coherent entry needs no look at
    its frame (a random load per entry, most of this check's time otherwise)."""
    pte, mm_base, fkey = pt.pte, pt.mm_base, ft.key
    base = mm_base[mm]
    count_pins = expected_pins.size > 0
    if not count_pins and not any_shared:  # the common case first: is every entry the PTE's frame?
        stray = 0
        for p in range(spte.size):  # no branch: the loop vectorizes
            f = spte[p]
            stray += (f >= 0) & (pte[base + p] != f)
        if stray == 0:
            return
    for p in range(spte.size):
        f = spte[p]
        if f < 0:
            continue
        if count_pins and sflags[p] & S_PINNED:
            expected_pins[f] += 1
        if pte[base + p] == f:
            if any_shared and sflags[p] & S_WRITABLE and fkey[f] <= SHARED:  # a write would reach every sharer
                _note(counts, examples, ISOLATION, p, f)
            continue
        owner = fkey[f]
        if owner == FREE or (owner >= 0 and np.searchsorted(mm_base, owner, side="right") - 1 != mm):
            _note(counts, examples, ISOLATION, p, f)
        else:
            _note(counts, examples, COHERENCE, p, f)


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
    pinning = bool(host.ft.pin.any()) or any((s.sflags & S_PINNED).any() for s in sim.secondaries)
    expected_pins = np.zeros(host.ft.key.size if pinning else 0, dtype=np.int32)  # device memory too
    shared = bool((host.ft.key <= SHARED).any())
    for sec in sim.secondaries:
        counts = np.zeros(len(KINDS), dtype=np.int64)
        examples = np.zeros((len(KINDS), 2), dtype=np.int64)
        _check_secondary(host.pt, host.ft, sec.mm.index, sec.spte, sec.sflags, shared, expected_pins, counts,
                         examples)  # fmt: skip
        report.counts += counts
        for kind in np.flatnonzero(counts):
            page, frame = examples[kind]
            report.messages.append(
                f"{KINDS[kind]}: {sec.label} maps page {page} to frame {frame}, "
                f"{_frame_story(sim, sec.mm, int(page), int(frame))} ({counts[kind]} entries)"
            )
    counts = np.zeros(len(KINDS), dtype=np.int64)
    examples = np.zeros((len(KINDS), 2), dtype=np.int64)
    _check_host(host.pt, host.ft, host.sw, expected_pins, shared, np.uint64(sim.tick), counts, examples)
    report.counts += counts
    for kind in np.flatnonzero(counts):
        a, b = examples[kind]
        report.messages.append(f"{KINDS[kind]}: {_host_story(sim, kind, int(a), int(b))} ({counts[kind]} found)")
    return report


def _frame_story(sim: "Simulation", mm, page: int, frame: int) -> str:
    owner = int(sim.host.ft.key[frame])
    pte = int(sim.host.pt.pte[mm.base + page])
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


def _host_story(sim: "Simulation", kind: int, a: int, b: int) -> str:
    if kind == PIN:
        holders = [s.label for s in sim.secondaries if np.any((s.spte == a) & ((s.sflags & S_PINNED) != 0))]
        return (
            f"frame {a} has pin count {int(sim.host.ft.pin[a])} and key {int(sim.host.ft.key[a])}, but "
            f"{'entries of ' + ', '.join(holders) if holders else 'no secondary entry'} account for its pins"
        )
    if kind == INTEGRITY:
        mm = sim.mm_of_key(a)
        return (
            f"page {a - mm.base} of mm '{mm.name}' should hold content {int(sim.host.pt.token[a])} but "
            f"{_pte_story(b)} does not"
        )
    return f"accounting mismatch at ({a}, {b})"


def verify_young(sim: "Simulation", subscriber, op: str, start: np.ndarray, end: np.ndarray, truth: np.ndarray,
                 answer: np.ndarray) -> None:  # fmt: skip
    """Compare a secondary MMU's answer to ``op`` over ranges [start, end) with ``truth``, what its entries'
    accessed bits said before the call; report a mismatch as an ``accessed`` violation."""
    wrong = answer & ~truth if op == "clear_young" else truth != answer  # clear_young may err toward old
    if not wrong.any():
        return
    report = Report()
    report.counts[ACCESSED] = int(np.count_nonzero(wrong))
    lied = np.flatnonzero(answer & ~truth)
    hid = np.flatnonzero(truth & ~answer)
    parts = []
    if lied.size:
        r = int(lied[0])
        parts.append(f"young for {lied.size} ranges none of its entries accessed (first: pages "
                     f"[{int(start[r])}, {int(end[r])}))")  # fmt: skip
    if hid.size:
        r = int(hid[0])
        mapped = np.flatnonzero(subscriber.spte[start[r] : end[r]] >= 0)
        page = int(start[r]) + (int(mapped[0]) if mapped.size else 0)
        parts.append(f"not young for {hid.size} ranges it accessed (first: page {page}, "
                     f"frame {int(subscriber.spte[page])})")  # fmt: skip
    message = f"accessed: {subscriber.label} answered {op} {' and '.join(parts)}"
    if not any(m.startswith(message.partition(" for ")[0]) for m in sim.violation_messages):
        report.messages.append(message)  # once per plugin, op and kind of lie; every one is counted
    sim.report_violations(report)
