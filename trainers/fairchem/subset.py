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


def write_subset(src: str | Path, indices: Sequence[int], out: Path, *, rekey: bool = False,
                 trust_pickles: bool = False) -> Path:
    """Copy records ``indices`` of ``src`` (in that order) into the LMDB file ``out`` (atomically)."""
    import lmdb

    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(src, trust_pickles=trust_pickles)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        raws = []
        for i in indices:
            raw = ds.get_bytes(int(i))
            if rekey:   # through the allow-list (data.trust_pickles lifts it), never a bare pickle.loads
                data = ds.get_record(int(i))
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


SAMPLE_LIMIT = 256   # records read per split to decide what the data needs (evenly spread over the selection)


class _Stub:
    """Stands in for torch_geometric's classes: the record's state lands in ``__dict__``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _record_fields(raw: bytes, names: Sequence[str]) -> Optional[dict]:
    """``names`` of a pickled PyG record as numpy, without importing torch; None when it needs torch."""
    import io

    from data.fastpickle import _NumpyRecordUnpickler

    class Unpickler(_NumpyRecordUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "torch_geometric" or module.startswith("torch_geometric."):
                return _Stub
            return super().find_class(module, name)

    try:
        obj = Unpickler(io.BytesIO(raw)).load()
    except Exception:  # noqa: BLE001 - anything unusual: the full reader decides
        return None
    state = getattr(obj, "__dict__", None)
    if not isinstance(state, dict):
        return None
    store = state.get("_store")
    mapping = getattr(store, "__dict__", {}).get("_mapping") if store is not None else state
    if not isinstance(mapping, dict):
        return None
    return {n: (np.asarray(mapping[n]) if mapping.get(n) is not None else None) for n in names}


def sample_indices(n: int, selection: Optional[Sequence[int]], limit: int = SAMPLE_LIMIT) -> np.ndarray:
    """At most ``limit`` indices spread evenly over ``selection`` (all of ``range(n)`` when None)."""
    pool = np.arange(n) if selection is None else np.asarray(selection, dtype=np.int64)
    if pool.size <= limit:
        return pool
    return pool[np.linspace(0, pool.size - 1, limit).round().astype(np.int64)]


def record_sample(selection: np.ndarray, limit: int = SAMPLE_LIMIT, seed: int = 0) -> np.ndarray:
    """At most ``limit`` positions of ``selection`` to check, the same on every call: its first and last, half
    spread evenly over it, half drawn with ``seed`` (a bad record between the even points is not always missed)."""
    if selection.size <= limit:
        return selection
    even = sample_indices(selection.size, None, limit // 2)
    drawn = np.random.default_rng(seed).choice(selection.size, size=limit - even.size, replace=False)
    return selection[np.unique(np.concatenate([even, drawn]))]


def refused_record(path: str, selection: Optional[Sequence[int]], limit: int = SAMPLE_LIMIT) -> Optional[str]:
    """The first record of a bounded sample of ``selection`` (all of ``path`` when None) that FairChem's reader,
    which unpickles without an allow-list, must not open: one line naming the shard and key; None when all pass.

    Only selected records are read (FairChem reads no other); see :func:`record_sample`.
    """
    from data.datasets import count
    from data.fastpickle import RefusedGlobal, check_record
    from data.lmdb_dataset import LmdbDataset, refusal
    from data.util import one_line

    pool = np.arange(count(path)) if selection is None else np.asarray(selection, dtype=np.int64)
    ds = LmdbDataset(path)
    try:
        for i in record_sample(pool, limit).tolist():
            raw = ds.get_bytes(int(i))
            k, key = ds.locate(int(i))
            shard = ds.shards[k]
            try:
                check_record(raw)
            except RefusedGlobal as exc:
                return refusal(shard, key, exc)
            except Exception as exc:  # noqa: BLE001 - a malformed pickle is bad input too
                return f"{shard}: key '{key}': value does not unpickle ({one_line(exc)})"
    finally:
        ds.close()
    return None


def sample_data(sources: Sequence[tuple], limit: int = SAMPLE_LIMIT):
    """PBC settings and atom tags of a bounded sample of ``sources`` = [(path, selection or None)], as a
    :class:`trainers.fairchem.data_needs.DataSample` (FairChem LMDBs are read without torch)."""
    from data.datasets import count, detect_format, open_dataset
    from trainers.fairchem.data_needs import DataSample

    sample = DataSample()
    for path, selection in sources:
        if not path:
            continue
        try:
            n = count(path)
        except (ConfigError, OSError):
            continue  # unreadable data is preflight's to report (data.*), not this sample's
        idx = sample_indices(n, selection, limit)
        if detect_format(path) == "lmdb":
            from data.lmdb_dataset import LmdbDataset

            ds = LmdbDataset(path)
            try:
                for i in idx:
                    fields = _record_fields(ds.get_bytes(int(i)), ("pbc", "tags"))
                    if fields is None:
                        s = ds[int(i)]
                        fields = {"pbc": s.pbc, "tags": s.tags}
                    sample.add(None if fields["pbc"] is None else fields["pbc"].reshape(-1), fields["tags"])
            finally:
                ds.close()
        else:
            ds = open_dataset(path)
            try:
                for i in idx:
                    s = ds[int(i)]
                    sample.add(s.pbc, s.tags)
            finally:
                close = getattr(ds, "close", None)
                if close:
                    close()
    return sample
