"""Random numbers drawn in numba (``mmnsim.pcg64``) are numpy's own: the same values from the same state,
and the Generator left where numpy would leave it, so runs draw what they drew before."""

import numpy as np
import pytest

from mmnsim import pcg64
from mmnsim.plugins.zipf import Zipf, ZipfConfig


def test_random_below_equals_numpys_float32_draws_and_leaves_the_same_state():
    ours, numpys = np.random.default_rng(7), np.random.default_rng(7)
    sizes = np.random.default_rng(1).integers(0, 40, 200)
    for i, n in enumerate(sizes):
        fraction = (i % 10) / 9  # 0 and 1 included
        if i % 7 == 3:  # an odd 32-bit draw in between leaves half a 64-bit draw buffered
            assert ours.random(3, dtype=np.float32).tolist() == numpys.random(3, dtype=np.float32).tolist()
        if i % 11 == 5:  # and a 64-bit draw in between does not touch that buffer
            assert ours.bit_generator.random_raw(2).tolist() == numpys.bit_generator.random_raw(2).tolist()
        assert (
            pcg64.random_below(ours, int(n), fraction).tolist()
            == (numpys.random(n, dtype=np.float32) < fraction).tolist()
        )
        assert ours.bit_generator.state == numpys.bit_generator.state


def test_zipf_pages_are_the_alias_table_read_with_numpys_raw_draws():
    """The sampler draws its 64-bit numbers in numba; they must be ``random_raw``'s, read as documented."""
    cfg = ZipfConfig(name="zipf", accesses=0, write_fraction=0.0, boot=False, boot_writes=True, start_tick=0,
                     exponent=1.1)  # fmt: skip
    w = Zipf(cfg, 30_000, np.random.default_rng(3))
    reference = np.random.default_rng(3)
    reference.shuffle(np.arange(30_000, dtype=np.int32))  # what Zipf's constructor drew
    for n in (1, 15, 17, 100_003):  # shorter and longer than the prefetch distance
        raw = reference.bit_generator.random_raw(n)
        bucket = ((raw >> np.uint64(32)) * np.uint64(w.table.size)) >> np.uint64(32)
        entry = w.table[bucket]
        low = np.uint64(0xFFFFFFFF)
        expected = np.where((raw & low) < (entry & low), bucket, entry >> np.uint64(32))
        assert np.array_equal(w.pages(n), expected)
    assert w.rng.bit_generator.state == reference.bit_generator.state


def test_a_generator_other_than_pcg64_is_refused_by_name():
    with pytest.raises(TypeError, match="PCG64.*MT19937"):
        pcg64.load(np.random.MT19937(0))
