"""Neighbour search and similar pairs in smaller row blocks for large sets (issue 33): the
same results whatever the block size, and the block size unchanged up to 16,384 images."""

from __future__ import annotations

import numpy as np

from folderfit.frozen import similarity


def vectors(n: int = 500, dim: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (8, dim))[rng.integers(0, 8, n)] + rng.normal(0, 0.7, (n, dim))
    x[1::50] = x[0::50][:len(x[1::50])]  # exact copies: ties
    return similarity.normalise(x)


def test_small_blocks_give_identical_neighbours_and_pairs(monkeypatch):
    z = vectors()
    whole = similarity.nearest(z, 10), similarity.pairs_above(z, 0.8)
    monkeypatch.setattr(similarity, "BLOCK_BYTES", similarity.BYTES_PER_PAIR * len(z) * 37)
    assert similarity.block_rows(len(z)) == 37
    blocked = similarity.nearest(z, 10), similarity.pairs_above(z, 0.8)
    assert np.array_equal(whole[0][0], blocked[0][0]) and np.array_equal(whole[0][1], blocked[0][1])
    assert whole[1] == blocked[1] and len(whole[1]) > 10


def test_block_rows_bound_the_memory_only_for_large_sets():
    assert similarity.block_rows(10) == similarity.block_rows(16_384) == 2048
    rows = similarity.block_rows(100_000)
    assert rows < 2048 and rows * 100_000 * similarity.BYTES_PER_PAIR <= similarity.BLOCK_BYTES
    assert similarity.block_rows(10**9) == 1
