"""data.replay: the seeded draw of held-out and candidate replay records, and the map to (file, index)."""
from __future__ import annotations

import numpy as np


def test_draw_holds_out_then_pools_without_overlap_and_is_seeded():
    from data.replay import draw

    val, cand = draw(1000, 10, 50, seed=3)
    assert len(val) == 10 and len(cand) == 50
    assert not set(val) & set(cand) and len(set(cand)) == 50
    again = draw(1000, 10, 50, seed=3)
    assert np.array_equal(val, again[0]) and np.array_equal(cand, again[1])
    assert not np.array_equal(cand, draw(1000, 10, 50, seed=4)[1])
    small_val, small_cand = draw(5, 10, 50, seed=0)     # fewer records than asked: one candidate is kept
    assert len(small_cand) >= 1 and len(small_val) + len(small_cand) == 5


def test_locate_maps_global_indices_to_files():
    from data.replay import locate

    rows = locate(np.array([0, 2, 3, 9, 10]), [3, 7, 1])
    assert rows.tolist() == [[0, 0], [0, 2], [1, 0], [1, 6], [2, 0]]
