"""Reader for ASE-database LMDBs (``*.aselmdb``: FairChem v2 / OMat24 layout).

Each row is zlib-compressed JSON under the ASCII key of its ASE id (ids start at 1); the
reserved keys ``nextid``, ``deleted_ids`` and ``metadata`` hold the same encoding. Live ids are
``range(1, nextid)`` minus ``deleted_ids``, as ``ase_db_backends.aselmdb`` computes them. Rows
written with ASE's JSON encoder (``{"__ndarray__": ...}``) and FairChem's older orjson writer
(plain nested lists) are both read. Same interface as :class:`data.lmdb_dataset.LmdbDataset`.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from launcher.core.errors import BadRecord, ConfigError

from data.shards import ASELMDB_SUFFIX, ShardedDataset, lmdb_error, open_env
from data.structure import Structure
from data.util import one_line

RESERVED_KEYS = (b"nextid", b"deleted_ids", b"metadata")


def decode_value(raw: bytes) -> Any:
    """zlib-compressed JSON (ASE or plain) -> Python objects."""
    from ase.io.jsonio import decode

    return decode(zlib.decompress(raw).decode("utf-8"))


def read_ids(shard: Path, env: Any = None) -> list[int]:
    """Live row ids of one shard (ConfigError when the reserved keys are unreadable)."""
    env = open_env(shard) if env is None else env
    try:
        return _read_ids(shard, env)
    except lmdb.Error as exc:
        raise lmdb_error(shard, exc) from None


def _read_ids(shard: Path, env: Any) -> list[int]:
    with env.begin() as txn:
        try:
            raw_next = txn.get(b"nextid")
            nextid = int(decode_value(raw_next)) if raw_next is not None else 1
            raw_del = txn.get(b"deleted_ids")
            deleted = set(decode_value(raw_del)) if raw_del is not None else set()
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{shard}: reserved keys 'nextid'/'deleted_ids' do not decode "
                              f"as zlib JSON ({one_line(exc)}); not an ASE LMDB?") from None
        if raw_next is None and env.stat()["entries"] > 0:
            raise ConfigError(f"{shard}: no 'nextid' entry (expected an ASE-database LMDB)")
    return [i for i in range(1, nextid) if i not in deleted]


def row_to_structure(row: dict, index: int) -> Structure:
    """An ASE-db row dict (``numbers``, ``positions``, ``cell``, ``pbc``, calculator results,
    ``key_value_pairs``, ``data``, ``constraints``) -> :class:`Structure`."""
    n = len(row["numbers"])
    fixed = np.zeros(n, dtype=np.int64)
    for c in row.get("constraints") or []:
        if isinstance(c, dict) and c.get("name") == "FixAtoms":
            idx = np.asarray(c.get("kwargs", {}).get("indices", []))
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            fixed[idx.astype(np.int64)] = 1
    kvp = dict(row.get("key_value_pairs") or {})
    info = {k: v for k, v in kvp.items() if isinstance(v, (str, int, float, bool))}
    info["ase_id"] = row.get("id")
    return Structure(
        positions=row["positions"],
        numbers=row["numbers"],
        cell=row.get("cell"),
        pbc=row.get("pbc"),
        energy=row.get("energy"),
        forces=row.get("forces"),
        stress=row.get("stress"),
        tags=row.get("tags"),
        fixed=fixed,
        sid=kvp.get("sid", row.get("unique_id")),
        fid=kvp.get("fid"),
        index=index,
        info=info,
    )


class AseLmdbDataset(ShardedDataset):
    """Random access to ``*.aselmdb`` shards as :class:`Structure` or PyG ``Data``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.ids: list[list[int]] = []
        super().__init__(path, ASELMDB_SUFFIX)

    def _shard_length(self, shard: Path) -> int:
        self.ids.append(read_ids(shard))
        return len(self.ids[-1])

    def get_row(self, i: int) -> dict:
        """The decoded row dict of entry ``i``."""
        k, local = self.locate(i)
        rid = self.ids[k][local]
        try:
            with self._pool.get(k).begin() as txn:
                raw = txn.get(f"{rid}".encode("ascii"))
        except lmdb.Error as exc:
            raise lmdb_error(self.shards[k], exc) from None
        if raw is None:
            raise ConfigError(f"{self.shards[k]}: key '{rid}': row missing (not in deleted_ids)")
        try:
            row = decode_value(raw)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{self.shards[k]}: key '{rid}': row does not decode "
                              f"({one_line(exc)})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{self.shards[k]}: key '{rid}': expected a JSON object row")
        row["id"] = rid
        return row

    def __getitem__(self, i: int) -> Structure:
        row = self.get_row(i)
        k, local = self.locate(i)
        try:
            s = row_to_structure(row, self.start(k) + local)
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"{self.shards[k]}: key '{row['id']}': bad row "
                              f"({one_line(exc)})") from None
        bad = s.problem()
        if bad:
            raise BadRecord(f"{self.shards[k]}: key '{row['id']}': {bad}")
        return s

    def get_data(self, i: int) -> Any:
        """The same entry as a FairChem-layout PyG ``Data``."""
        from data.pyg import structure_to_pyg

        return structure_to_pyg(self[i])
