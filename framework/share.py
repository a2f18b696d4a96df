"""Shared, write-protected frames (KSM pages): merging pages of identical content into one frame, and the
copy-on-write that undoes it.

A shared frame's ``FrameTable.key`` is ``SHARED - (n - 1)`` for the ``n`` pages that map it (``frames.sharers``
reads it back), instead of the one page a frame normally names. The pages keep their VMA's permissions;
what write-protects them is the shared frame: a write (or a long-term pin) through the CPU or a secondary
MMU faults, and the access kernel allocates a copy and asks Python to remap the page (``break_cow``,
do_wp_page's wp_page_copy), inside an invalidation (event CLEAR) so that no secondary keeps the shared
frame for that page. Secondary MMUs map a shared frame read-only.

``merge_pages`` is what KSM's try_to_merge_one_page does for a policy that found pages of equal content: first
write-protect the page that will hold the shared frame (write_protect_page: an invalidation, event CLEAR),
then point each duplicate at it (replace_page: another, with the historical ``change_pte`` inside it if
asked) and free the duplicate's frame.

Simplifications: shared frames are never swapped, migrated or compacted (the kernel can, through
rmap_walk_ksm); a shared frame whose last page goes is freed at once (KSM would prune its stable node
later); transparent huge pages are not merged (KSM splits them first).
"""

from typing import TYPE_CHECKING

import numpy as np

from . import counters as C
from .arguments import OperationError, mm_arg, pages_arg
from .frames import SHARED, free_frame, sharers
from .kernel import kernel
from .notifier import Event, single_pages
from .pagebits import P_DEVICE, P_DIRTY, P_HUGE, P_YOUNG

if TYPE_CHECKING:
    from .mm import MM
    from .simulation import Simulation


def mergeable(sim: "Simulation", mm: "MM", pages: np.ndarray) -> np.ndarray:
    """Which of ``pages`` KSM could merge now: resident in RAM on a 4 KiB mapping, not pinned (KSM's
    write_protect_page refuses a page with extra references), not already shared."""
    ft = sim.host._ft
    mm = mm_arg(sim, mm, "mergeable")
    pages = pages_arg(pages, mm.npages, "mergeable")
    frames = mm.pte[pages]
    ok = (frames >= 0) & ((mm.flags[pages] & (P_HUGE | P_DEVICE)) == 0)
    f = frames[ok]
    ok[ok] = (ft.pin[f] == 0) & (ft.key[f] >= 0)
    return ok


def is_shared(sim: "Simulation", mm: "MM", pages: np.ndarray) -> np.ndarray:
    """Which of ``pages`` map a shared frame."""
    mm = mm_arg(sim, mm, "is_shared")
    frames = mm.pte[pages_arg(pages, mm.npages, "is_shared")]
    out = frames >= 0
    out[out] = sim.host._ft.key[frames[out]] <= SHARED
    return out


def sharing(sim: "Simulation") -> tuple[int, int]:
    """(pages_shared, pages_sharing) as /sys/kernel/mm/ksm reports them: shared frames, and the pages
    mapping them beyond one each (the frames saved)."""
    keys = sim.host._ft.key
    shared = keys[keys <= SHARED].astype(np.int64)
    return int(shared.size), int((SHARED + 1 - shared).sum() - shared.size)


def merge_pages(sim: "Simulation", mm: "MM", pages: np.ndarray, into: "MM", into_pages: np.ndarray,
          change_pte: bool = False) -> int:  # fmt: skip
    """Merge each page ``pages[i]`` of ``mm`` into the frame of page ``into_pages[i]`` of ``into`` (either
    mm may be the same). Pairs whose contents differ, or whose pages stopped qualifying (``mergeable``,
    or already sharing the target's frame), are skipped, as KSM's final memcmp would. Returns pages merged.
    """
    mm, into = mm_arg(sim, mm, "merge_pages"), mm_arg(sim, into, "merge_pages", "into")
    pages = pages_arg(pages, mm.npages, "merge_pages")
    into_pages = pages_arg(into_pages, into.npages, "merge_pages", "into_pages")
    if pages.size != into_pages.size:
        raise OperationError(f"merge_pages: {pages.size} pages but {into_pages.size} targets (one each)")
    ft = sim.host._ft
    target = into.pte[into_pages]
    ok = mergeable(sim, mm, pages) & (target >= 0) & ((into.flags[into_pages] & (P_HUGE | P_DEVICE)) == 0)
    ok &= mm.token[pages] == into.token[into_pages]
    ok &= mm.pte[pages] != target
    ok[ok] &= ft.pin[target[ok]] == 0
    if mm is into:
        ok &= pages != into_pages
    pages, into_pages = pages[ok], into_pages[ok]
    if pages.size == 0:
        return 0
    # write_protect_page: the targets that are not shared yet become shared frames of one page each.
    fresh = np.unique(into_pages[ft.key[into.pte[into_pages]] >= 0])
    if fresh.size:

        def protect() -> None:
            ft.key[into.pte[fresh]] = SHARED

        into.invalidate(single_pages(into, fresh, Event.CLEAR), protect)
    # replace_page: each duplicate maps the shared frame; its own frame is freed.
    pages, first = np.unique(pages, return_index=True)  # a page merges once
    frames = into.pte[into_pages[first]]
    host = sim.host

    def replace() -> None:
        _replace(host._pt, host._ft, mm.base + pages, frames)
        if change_pte:  # set_pte_at_notify, as KSM did until 2024
            mm.chain.call("change_pte", mm=mm, pages=pages, frames=frames)

    mm.invalidate(single_pages(mm, pages, Event.CLEAR), replace)
    return int(pages.size)


@kernel
def _replace(pt, ft, keys, frames):
    pte, pflags = pt.pte, pt.flags
    fkey, ftoken, node, lists, pb, bits = ft.key, ft.token, ft.node, ft.lists, ft.pb, ft.bits
    for i in range(keys.size):
        old = pte[keys[i]]
        pte[keys[i]] = frames[i]
        fkey[frames[i]] -= 1  # one more page shares it
        pflags[keys[i]] = (pflags[keys[i]] | P_YOUNG) & ~P_DIRTY
        free_frame(node, lists, pb, bits, fkey, ftoken, old)


def break_cow(sim: "Simulation", key: int, frame: int) -> None:
    """The access kernel's COW_BREAK: page ``key`` (global) wrote to, or pinned, a shared frame; ``frame``
    holds its copy. Remap it inside an invalidation (wp_page_copy), dropping one share of the old frame."""
    mm = sim.mm_of_key(key)
    host = sim.host

    def remap() -> None:
        _unshare(host._pt, host._ft, key, frame)

    mm.invalidate(single_pages(mm, np.array([key - mm.base]), Event.CLEAR), remap)
    host._ctr[C.COW_KSM] += 1


@kernel
def _unshare(pt, ft, key, frame):
    old = pt.pte[key]
    pt.pte[key] = frame
    pt.flags[key] |= P_YOUNG
    drop_share(ft, old)


@kernel
def drop_share(ft, f):
    """One page stopped mapping shared frame ``f``: free it with its last page."""
    if sharers(ft.key[f]) == 1:
        free_frame(ft.node, ft.lists, ft.pb, ft.bits, ft.key, ft.token, f)
    else:
        ft.key[f] += 1
