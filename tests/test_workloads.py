"""The synthetic workloads generate the distributions they name, reproducibly from the run's seed."""

import numpy as np
import pytest

from mmnsim.plugins.hotcold import HotCold, HotColdConfig
from mmnsim.plugins.sequential import Sequential, SequentialConfig
from mmnsim.plugins.uniform import Uniform, UniformConfig
from mmnsim.plugins.zipf import Zipf, ZipfConfig
from mmnsim.workload import WorkloadStream

N = 50_000


def zipf(exponent=1.0, seed=0, **kw):
    cfg = ZipfConfig(name="zipf", accesses=kw.get("accesses", 0), write_fraction=kw.get("wf", 0.3),
                     boot=kw.get("boot", False), boot_writes=True, start_tick=0,
                     exponent=exponent)  # fmt: skip
    return Zipf(cfg, N, np.random.default_rng(seed))


@pytest.mark.parametrize("exponent", [0.6, 1.0, 1.4])
def test_zipf_gives_rank_r_probability_proportional_to_r_to_the_minus_exponent(exponent):
    w = zipf(exponent)
    rng = np.random.default_rng(0)  # the same stream the workload shuffled its ranks with
    order = np.arange(N, dtype=np.int32)
    rng.shuffle(order)
    counts = np.bincount(w.pages(2_000_000), minlength=N)
    weights = np.arange(1, N + 1, dtype=float) ** -exponent
    expected = weights / weights.sum() * 2_000_000
    for rank in (0, 1, 4, 49, 499):
        assert counts[order[rank]] == pytest.approx(expected[rank], rel=0.05 + 3 / np.sqrt(expected[rank]))
    # Hot ranks are scattered over memory, not packed at the start.
    assert np.abs(np.diff(np.sort(order[:100]))).mean() > N / 1000


def test_zipf_is_reproducible_from_its_seed():
    assert np.array_equal(zipf(seed=3).pages(1000), zipf(seed=3).pages(1000))
    assert not np.array_equal(zipf(seed=3).pages(1000), zipf(seed=4).pages(1000))


def test_uniform_sequential_and_hotcold():
    rng = np.random.default_rng(1)
    u = Uniform(UniformConfig("uniform", 0, 0.0, False, True, 0), N, rng).pages(500_000)
    assert u.min() >= 0 and u.max() < N and np.bincount(u, minlength=N).std() < 4 * np.sqrt(10)
    s = Sequential(SequentialConfig("sequential", 0, 0.0, False, True, 0), 10, rng)
    assert s.pages(7).tolist() == [0, 1, 2, 3, 4, 5, 6] and s.pages(5).tolist() == [7, 8, 9, 0, 1]
    cfg = HotColdConfig("hotcold", 0, 0.0, False, True, 0, hot_fraction=0.1, hot_probability=0.9, shift_every=100_000)
    h = HotCold(cfg, N, rng)
    first = h.pages(100_000)
    assert np.mean(first < N // 10) == pytest.approx(0.9, abs=0.01)  # the hot set is the first 10%
    second = h.pages(100_000)
    assert np.mean((second >= N // 10) & (second < N // 5)) == pytest.approx(0.9, abs=0.01)  # then it moved


def test_stream_boots_every_page_once_with_writes_then_runs_the_pattern():
    stream = WorkloadStream(zipf(boot=True, accesses=1000, wf=0.25))
    pages, writes = stream.next_batch(N + 1000)
    assert np.array_equal(pages[:N], np.arange(N)) and writes[:N].all()
    assert writes[N:].mean() == pytest.approx(0.25, abs=0.05)
    assert stream.done and stream.next_batch(10) is None


def test_a_workload_returning_pages_outside_its_mm_is_reported():
    class Broken(Uniform):
        def pages(self, n):
            return np.full(n, self.npages)

    stream = WorkloadStream(Broken(UniformConfig("uniform", 10, 0.0, False, True, 0), N, np.random.default_rng()))
    with pytest.raises(ValueError, match="returned pages outside"):
        stream.next_batch(10)


@pytest.mark.parametrize("page", [-1, N])
def test_a_page_just_outside_either_end_is_reported(page):
    class Edge(Uniform):
        def pages(self, n):
            out = np.zeros(n, dtype=np.int32)
            out[n // 2] = page
            return out

    stream = WorkloadStream(Edge(UniformConfig("uniform", 10, 0.0, False, True, 0), N, np.random.default_rng()))
    with pytest.raises(ValueError, match="returned pages outside"):
        stream.next_batch(10)


def test_a_workload_returning_write_flags_of_the_wrong_length_is_reported():
    class Broken(Uniform):
        def pages(self, n):
            return np.zeros(n, dtype=np.int32), np.zeros(n + 1, dtype=bool)

    stream = WorkloadStream(Broken(UniformConfig("uniform", 10, 0.0, False, True, 0), N, np.random.default_rng()))
    with pytest.raises(ValueError, match=r"returned \(11,\) write flags for \(10,\) pages"):
        stream.next_batch(10)
