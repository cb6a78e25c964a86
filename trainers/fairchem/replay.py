"""``data.replay`` on the FairChem backends: the replay records mixed into the derived training set.

FairChem v1's trainer reads one training dataset with one loss weight and one head for every record, so what it
can honour is a random selection mixed into that dataset: the training split (the run's selection of
``data.train``) and ``n = min(max_samples, max(1, round(ratio x training records)))`` replay records, drawn as
the core trainer draws its candidates (seeded by the run seed), become one folder of shards that FairChem reads
as one dataset (``<native>/data/train-<ts>-replay/``): its shuffled batches hold replay at ``ratio / (1 + ratio)``
on average. What FairChem cannot honour is refused in the backend's check (:mod:`trainers.fairchem.replay_keys`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from launcher.core.replay_spec import replay_on

def with_replay(spec: Any, train: str, folder: Path, echo: Callable[[str], None]) -> str:
    """``train`` (the training split FairChem would read) with the replay records mixed in: the folder of shards
    ``folder`` (the training file(s) linked, the replay records copied), or ``train`` itself without replay."""
    if not replay_on(spec):
        return train
    import numpy as np

    from data.datasets import count
    from data.replay import draw, locate, sizes_of
    from trainers.fairchem.subset import write_subset

    r = spec.data.replay
    sizes = sizes_of(r.paths)
    n_train = count(train)
    n = min(int(r.max_samples), max(1, int(round(float(r.ratio) * n_train))))
    _, cand = draw(sum(sizes), 0, r.pool, spec.effective_seed)
    rows = locate(cand[:n], sizes)
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(train)
    shards = sorted(q for q in src.glob("*.lmdb") if q.is_file()) if src.is_dir() else [src]
    for j, shard in enumerate(shards):   # linked, not copied: the training data may be large
        link = folder / f"{j:04d}-train.lmdb"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(shard.resolve(), link)
    for k, path in enumerate(r.paths):
        mine = rows[rows[:, 0] == k, 1]
        if len(mine):
            write_subset(path, np.sort(mine), folder / f"{len(shards) + k:04d}-replay.lmdb",
                         trust_pickles=bool(spec.data.trust_pickles))
    echo(f"[fairchem] data.replay: {len(rows)} replay records mixed with {n_train} training records "
         f"(ratio {r.ratio:g}, random from {len(cand)} candidates of {sum(sizes)}) in {folder}")
    return str(folder)
