"""Reader for FairChem v1 LMDB files: one ``.lmdb`` or a folder of ``*.lmdb`` shards.

Keys are ASCII integers ``"0".."n-1"`` per shard plus a pickled ``length``; shards are read in
sorted order as one global index, exactly as FairChem's own ``LmdbDataset`` does, so an index
means the same structure to both backends. Not a ``torch.utils.data.Dataset`` subclass on
purpose: this module must import without torch (preflight uses it); DataLoader only needs
``__len__``/``__getitem__``.

LMDB values are pickles, and datasets come from the internet: records are unpickled through an
allow-list of the classes FairChem's and our writers store (:mod:`data.fastpickle`), and
``length`` as a plain integer; ``trust_pickles=True`` (``data.trust_pickles``) lifts the
allow-list for data you trust that holds other classes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lmdb
from launcher.core.errors import BadRecord, ConfigError

from data.shards import LMDB_SUFFIX, ShardedDataset, lmdb_error, open_env
from data.structure import Structure
from data.util import one_line

LENGTH_KEY = b"length"


def encode_key(i: int) -> bytes:
    """FairChem's key for entry ``i`` of a shard."""
    return f"{i}".encode("ascii")


def read_length(shard: Path, env: Any = None) -> int:
    """Entries in one shard: the pickled ``length`` entry, else (as FairChem) the entry count.

    ``length`` is read as a plain integer (a Python int or numpy integer; nothing it names is
    run). Without it the keys must be exactly ``0..n-1``; anything else is a ConfigError.
    """
    env = open_env(shard) if env is None else env
    try:
        return _read_length(shard, env)
    except lmdb.Error as exc:
        raise lmdb_error(shard, exc) from None


def _read_length(shard: Path, env: Any) -> int:
    from data.fastpickle import RefusedGlobal, loads_int

    entries = int(env.stat()["entries"])
    with env.begin() as txn:
        raw = txn.get(LENGTH_KEY)
        if raw is not None:
            try:
                n = loads_int(raw)
            except RefusedGlobal as exc:
                raise ConfigError(f"{shard}: key 'length': expected a pickled integer, got a "
                                  f"pickle naming {exc.name} (refused: not run)") from None
            except Exception as exc:  # noqa: BLE001 - any unpickling failure is bad input
                raise ConfigError(f"{shard}: key 'length': value does not unpickle "
                                  f"({one_line(exc)})") from None
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"{shard}: key 'length': expected a non-negative int, "
                                  f"got {n!r}")
            if n > entries - 1:
                raise ConfigError(f"{shard}: key 'length' says {n} entries but the file "
                                  f"holds {entries - 1}")
            return n
        if entries and (txn.get(encode_key(0)) is None
                        or txn.get(encode_key(entries - 1)) is None):
            raise ConfigError(f"{shard}: no 'length' entry and the keys are not "
                              f"'0'..'{entries - 1}' (expected FairChem's LMDB layout)")
        return entries


def refusal(shard: Path, key: Any, exc: Any) -> str:
    """The one line for a record naming a class outside the allow-list."""
    return (f"{shard}: key '{key}': refusing to unpickle {exc.name} (not a class FairChem LMDB "
            f"records store; if you trust this file set data.trust_pickles=true, or pass "
            f"--trust-pickles to launch-data)")


class LmdbDataset(ShardedDataset):
    """Random access to FairChem-layout LMDB shards as :class:`Structure` or raw PyG ``Data``.

    Records naming a class outside :data:`data.fastpickle.ALLOWED` are a ConfigError unless
    ``trust_pickles`` (then they are unpickled without restriction, as FairChem does).
    """

    def __init__(self, path: str | os.PathLike, trust_pickles: bool = False) -> None:
        self.trust_pickles = bool(trust_pickles)
        super().__init__(path, LMDB_SUFFIX)

    def _shard_length(self, shard: Path) -> int:
        return read_length(shard)

    def get_bytes(self, i: int) -> bytes:
        """The stored pickle of entry ``i`` (for benchmarks and copying)."""
        k, local = self.locate(i)
        try:
            with self._pool.get(k).begin() as txn:
                raw = txn.get(encode_key(local))
        except lmdb.Error as exc:
            raise lmdb_error(self.shards[k], exc) from None
        if raw is None:
            raise ConfigError(f"{self.shards[k]}: key '{local}': entry missing "
                              f"(the shard's length is {self.lengths[k]})")
        return raw

    def get_record(self, i: int, *, tensors: bool = True) -> Any:
        """Entry ``i`` unpickled as stored (no PyG upgrade), through the allow-list unless trusted;
        a refused or malformed record is a one-line ConfigError naming its shard and key."""
        from data.fastpickle import RefusedGlobal, loads_record

        raw = self.get_bytes(i)
        k, local = self.locate(i)
        try:
            return loads_record(raw, tensors=tensors, trust=self.trust_pickles)
        except RefusedGlobal as exc:
            raise ConfigError(refusal(self.shards[k], local, exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{self.shards[k]}: key '{local}': value does not unpickle "
                              f"({one_line(exc)})") from None

    def _load(self, i: int, tensors: bool) -> tuple[Any, int, int]:
        from data.pyg import pyg2

        obj = self.get_record(i, tensors=tensors)
        k, local = self.locate(i)
        if not hasattr(obj, "__dict__") or not hasattr(obj, "keys"):
            raise ConfigError(f"{self.shards[k]}: key '{local}': expected a torch_geometric "
                              f"Data record, got {type(obj).__name__}")
        return pyg2(obj), k, local

    def get_data(self, i: int) -> Any:
        """The raw PyG ``Data`` of entry ``i`` (upgraded if pickled by PyG 1.x)."""
        return self._load(i, tensors=True)[0]

    def __getitem__(self, i: int) -> Structure:
        from data.pyg import pyg_to_structure

        data, k, local = self._load(i, tensors=False)
        try:
            s = pyg_to_structure(data, self.start(k) + local)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else one_line(exc)
            raise ConfigError(f"{self.shards[k]}: key '{local}': {msg}") from None
        bad = s.problem()  # refused by name here: a NaN position would stall the neighbour search
        if bad:
            raise BadRecord(f"{self.shards[k]}: key '{local}': {bad}")
        return s
