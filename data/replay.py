"""Which records of the replay files (``data.replay.paths``) a fine-tune may read: a seeded draw over the files
read as one set, and the map from that set's indices to (file, index in file). Shared by every backend that
replays; nothing here reads a record."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def draw(n_total: int, val_samples: int, pool: int, seed: int) -> tuple:
    """(held-out, candidates) global indices: a seeded draw of ``val_samples + pool`` of ``n_total`` records,
    without building a permutation of all of them (memory follows what is drawn, not the files)."""
    take = min(int(n_total), int(val_samples) + int(pool))
    picks = np.random.Generator(np.random.PCG64([int(seed), 0x5E1A])).choice(n_total, size=take, replace=False)
    picks = np.asarray(picks, dtype=np.int64)
    n_val = min(int(val_samples), max(take - 1, 0))   # keep at least one candidate
    return picks[:n_val], picks[n_val:]


def locate(global_idx: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Global indices over the concatenated files -> rows (file, index in that file)."""
    if not len(global_idx):
        return np.zeros((0, 2), dtype=np.int64)
    ends = np.cumsum(sizes)
    k = np.searchsorted(ends, global_idx, side="right")
    starts = ends - np.asarray(sizes)
    return np.stack([k, np.asarray(global_idx) - starts[k]], axis=1).astype(np.int64)


def sizes_of(paths: Sequence[str]) -> list:
    """Records in each replay file (LMDB metadata only)."""
    from data.datasets import count

    return [int(count(p)) for p in paths]
