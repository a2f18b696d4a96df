"""The host invariant check finds a wrong reverse map or lost content wherever it is: in a frame, in a swap
slot, or on a page never written. (The check first compares hash sums of both sides in order; these cases
make sure a disagreement is found and that the page-by-page walk then counts and names each violation.)"""

import numpy as np
import pytest

from conftest import run
from mmnsim.invariants import KINDS
from mmnsim.pagebits import PTE_NONE


@pytest.fixture()
def sim():
    sim, metrics = run()  # 1.33x overcommit: pages in frames and in swap slots
    assert metrics["invariant_violations"] == 0
    return sim


def _counts(sim) -> dict:
    return {k: int(c) for k, c in zip(KINDS, sim.check_invariants().counts, strict=True) if c}


def test_a_clean_host_passes(sim):
    assert _counts(sim) == {}


def test_a_frame_with_the_wrong_content_is_an_integrity_violation(sim):
    pt, ft = sim.host._pt, sim.host._ft
    key = int(np.flatnonzero(pt.pte >= 0)[7])
    ft.token[pt.pte[key]] ^= 1
    assert _counts(sim) == {"integrity": 1}
    assert f"page {key - sim.mms[0].base} of mm" in sim.violation_messages[-1]


def test_a_swap_slot_with_the_wrong_content_is_an_integrity_violation(sim):
    pt, sw = sim.host._pt, sim.host._sw
    key = int(np.flatnonzero(pt.pte < PTE_NONE)[3])
    sw.token[-2 - pt.pte[key]] += 1
    assert _counts(sim) == {"integrity": 1}


def test_content_on_a_page_never_written_is_an_integrity_violation(sim):
    pt = sim.host._pt
    pt.pte[5], pt.token[5] = PTE_NONE, 0  # forget page 5 (its frame stays in use, naming it)
    pt.token[5] = 99
    counts = _counts(sim)
    assert counts["integrity"] == 1 and counts["conservation"] >= 1  # and a frame in use that no PTE maps


def test_two_pages_swapping_frames_break_the_reverse_map(sim):
    pt = sim.host._pt
    a, b = np.flatnonzero(pt.pte >= 0)[[10, 20]]
    pt.pte[a], pt.pte[b] = pt.pte[b], pt.pte[a]  # each frame still names its old page
    assert _counts(sim)["conservation"] == 2  # (KVM's entries for them disagree with the PTEs too: coherence)


def test_a_page_pointing_at_a_free_frame_breaks_the_reverse_map(sim):
    pt, ft = sim.host._pt, sim.host._ft
    key = int(np.flatnonzero(pt.pte >= 0)[0])
    pt.pte[key] = int(np.flatnonzero(ft.key == -1)[0])
    assert _counts(sim)["conservation"] >= 1
