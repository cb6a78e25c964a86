"""Index selection for FairChem: the selected records copied into a run-local LMDB.

FairChem v1 cannot read an index list, so when ``data.indices`` / sampling select part of a
split (or when evaluation needs ids FairChem can map back), the records are copied, byte for
byte, into ``<native>/data/<split>-<tag>.lmdb``. With ``rekey`` each copy gets ``sid = original
index``, ``fid = 0`` so that predictions map back to dataset indices even when the source's
sid/fid pairs are not unique.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from launcher.core.errors import ConfigError


def split_selection(spec: Any, split: str, *, active: bool) -> Optional[np.ndarray]:
    """The indices ``spec`` selects from ``split``; None when that is the whole split in order."""
    from data.datasets import count
    from data.indices import select_split_indices

    path = getattr(spec.data, split)
    n = count(path)
    idx = select_split_indices(spec.data, split, n, active=active)
    if idx.size == n and np.array_equal(idx, np.arange(n)):
        return None
    return idx


def write_subset(src: str | Path, indices: Sequence[int], out: Path, *, rekey: bool = False) -> Path:
    """Copy records ``indices`` of ``src`` (in that order) into the LMDB file ``out`` (atomically)."""
    import lmdb

    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(src)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        raws = []
        for i in indices:
            raw = ds.get_bytes(int(i))
            if rekey:
                data = pickle.loads(raw)
                data.sid = int(i)
                data.fid = 0
                raw = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
            raws.append(raw)
        size = sum(len(r) for r in raws)
        env = lmdb.open(tmp, subdir=False, map_size=max(1 << 20, 2 * size + (1 << 20)), meminit=False,
                        map_async=True, lock=False)
        try:
            with env.begin(write=True) as txn:
                for k, raw in enumerate(raws):
                    txn.put(f"{k}".encode("ascii"), raw)
                txn.put(b"length", pickle.dumps(len(raws), protocol=pickle.HIGHEST_PROTOCOL))
            env.sync()
        finally:
            env.close()
        Path(tmp + "-lock").unlink(missing_ok=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + "-lock").unlink(missing_ok=True)
        raise
    finally:
        ds.close()
    if not out.stat().st_size:
        raise ConfigError(f"{out}: writing the selected records failed")
    return out
