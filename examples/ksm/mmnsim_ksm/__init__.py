"""KSM (kernel samepage merging, mm/ksm.c) as an mmnsim host policy.

ksmd scans the mergeable memory of every tenant (QEMU marks guest RAM MADV_MERGEABLE), ``pages_to_scan``
pages every ``sleep_ms``. A page whose content matches a KSM page already in the stable tree joins it; a
page whose content did not change since the last pass (the checksum rule, which keeps volatile pages
out) is looked up in the unstable tree of this pass: on a match the two are merged into a new KSM page,
else the page waits there. The unstable tree is rebuilt every full pass.

Merging is the framework's ``merge_pages``: write-protect the page that becomes the KSM page and replace
each duplicate's frame with it, each step an invalidation (event CLEAR), with the historical
``change_pte`` inside the second if ``change_pte`` is set. A write to a KSM page is a copy-on-write
fault (``cow_ksm``). Pinned pages are never merged: with a pinning secondary MMU, KSM saves nothing.
"""

from dataclasses import dataclass

import numpy as np

from mmnsim import HostPolicy, Metric, hookimpl, is_shared, merge_pages, mergeable, require, sharing

UNSEEN = np.uint32(0xFFFFFFFF)


@dataclass
class KSMConfig:
    pages_to_scan: int  # /sys/kernel/mm/ksm/pages_to_scan
    sleep_ms: float  # /sys/kernel/mm/ksm/sleep_millisecs
    change_pte: bool  # raise change_pte inside replace_page's invalidation, as kernels before 6.9 did
    scan_page_ns: float  # ksmd's CPU per page scanned (checksum, tree lookup)
    merge_page_ns: float  # ksmd's CPU per page merged (write-protect, compare, replace)

    def __post_init__(self) -> None:
        require(self.pages_to_scan >= 1, f"pages_to_scan must be >= 1, got {self.pages_to_scan}")
        require(self.sleep_ms > 0, f"sleep_ms must be > 0, got {self.sleep_ms}")


class KSM(HostPolicy):
    name = "ksm"
    Config = KSMConfig
    declared_metrics = (
        Metric("ksm_pages_scanned", "pages", int, "pages ksmd scanned", kernel="ksm/pages_scanned"),
        Metric("ksm_full_scans", "scans", int, "passes over all mergeable memory", kernel="ksm/full_scans"),
        Metric("ksm_merges", "pages", int, "pages merged into a KSM page (cumulative)"),
        Metric("pages_shared", "pages", int, "KSM pages in use at the end", kernel="ksm/pages_shared"),
        Metric("pages_sharing", "pages", int, "pages mapping a KSM page, beyond the first", kernel="ksm/pages_sharing"),
    )

    def __init__(self, sim, cfg: KSMConfig):
        super().__init__(sim, cfg)
        self.mms = [t.mm for t in sim.tenants]
        # rmap_item->oldchecksum: content at the last pass (none yet: every page waits one pass)
        self.checksum = [np.full(mm.npages, UNSEEN, dtype=np.uint32) for mm in self.mms]
        self.stable: dict[int, tuple[int, int]] = {}  # content -> (mm index, page) mapping its KSM page
        self.unstable: dict[int, tuple[int, int]] = {}  # content -> a page seen unchanged this pass
        self.pending: set[tuple[int, int]] = set()  # new KSM pages of this tick, merged at its end
        self.cursor = (0, 0)
        self.credit = 0.0  # pages ksmd may scan by now
        self.last_ns = 0.0
        self.metrics = {"ksm_pages_scanned": 0, "ksm_full_scans": 0, "ksm_merges": 0}

    @hookimpl
    def host_tick(self, sim) -> None:
        self.credit += (sim.time_ns - self.last_ns) / (self.cfg.sleep_ms * 1e6) * self.cfg.pages_to_scan
        self.last_ns = sim.time_ns
        pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (mm, into mm) -> [(page, into page)]
        while self.credit >= 1:
            i, start = self.cursor
            end = min(start + int(self.credit), self.mms[i].npages)
            self._scan(i, np.arange(start, end), pairs)
            self.credit -= end - start
            self.cursor = (i, end) if end < self.mms[i].npages else ((i + 1) % len(self.mms), 0)
            if self.cursor == (0, 0):
                self.unstable.clear()
                self.metrics["ksm_full_scans"] += 1
        for (i, j), found in pairs.items():
            pages, into = np.array(found).T
            merged = merge_pages(sim, self.mms[i], pages, self.mms[j], into, self.cfg.change_pte)
            self.metrics["ksm_merges"] += merged
            sim.charge(merged * self.cfg.merge_page_ns)
        self.pending.clear()

    def _scan(self, i: int, pages: np.ndarray, pairs: dict) -> None:
        mm = self.mms[i]
        self.metrics["ksm_pages_scanned"] += pages.size
        self.sim.charge(pages.size * self.cfg.scan_page_ns)
        pages = pages[mergeable(self.sim, mm, pages)]
        content = mm.token[pages]
        steady = content == self.checksum[i][pages]
        self.checksum[i][pages] = content
        for page, token, unchanged in zip(pages.tolist(), content.tolist(), steady.tolist(), strict=True):
            target = self._stable_page(token)
            if target is None:
                if not unchanged:
                    continue  # changed since the last pass: too volatile to merge (the checksum rule)
                other = self.unstable.get(token)
                if other is None or other == (i, page) or not self._holds(other, token, shared=False):
                    self.unstable[token] = (i, page)
                    continue
                del self.unstable[token]
                self.stable[token] = target = other  # the pair becomes a new KSM page
                self.pending.add(other)
            pairs.setdefault((i, target[0]), []).append((page, target[1]))

    def _stable_page(self, token: int) -> tuple[int, int] | None:
        """A page mapping the KSM page of this content (or becoming one this tick), if there is one."""
        target = self.stable.get(token)
        if target is None or target in self.pending or self._holds(target, token, shared=True):
            return target
        del self.stable[token]  # its KSM page was copied away or freed
        return None

    def _holds(self, target: tuple[int, int], token: int, shared: bool) -> bool:
        mm, page = self.mms[target[0]], np.array([target[1]])
        ok = is_shared(self.sim, mm, page) if shared else mergeable(self.sim, mm, page)
        return bool(ok[0]) and int(mm.token[target[1]]) == token

    @hookimpl
    def collect_metrics(self, sim) -> dict[str, float]:
        shared, sharing_pages = sharing(sim)
        return {**self.metrics, "pages_shared": shared, "pages_sharing": sharing_pages}


@hookimpl
def register_components():
    return [KSM]
