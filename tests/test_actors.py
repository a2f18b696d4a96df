"""The culprit record: who last changed each page, kept in 2 bytes a page through a log that compacts when full."""

import numpy as np

from mmnsim.actors import CAPACITY, Actors


def _change(actors: Actors, label: str, keys: list[int], tick: int) -> None:
    with actors.acting(label):
        actors.record(0, np.array(keys), np.array(keys) + 1, "CLEAR of mm 'guest0'", tick)


def test_a_full_log_compacts_keeping_recent_changes_exact_and_older_ones_bounded():
    actors = Actors(1000)
    _change(actors, "policy 'old'", [900], 0)  # a page changed long ago, never since
    assert actors.who_changed(900) == "policy 'old' (CLEAR of mm 'guest0') at tick 0"
    assert actors.who_changed(901) is None
    for tick in range(1, 3 * CAPACITY):  # one event per tick, each on pages 0..499 in turn
        _change(actors, f"policy 'p{tick % 3}'", [tick % 500], tick)
        if tick == CAPACITY - 3:
            assert actors.generation == 0  # not full yet
    assert actors.generation >= 2
    last = 3 * CAPACITY - 1
    assert actors.who_changed(last % 500) == f"policy 'p{last % 3}' (CLEAR of mm 'guest0') at tick {last}"
    old = actors.who_changed(900)  # merged with the other old changes of its actor: bounded, not lost
    assert old.startswith("policy 'old' (CLEAR of mm 'guest0') at or before tick "), old
    assert actors.who_changed(901) is None and actors._changed.dtype == np.uint16
