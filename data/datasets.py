"""One entry point for every on-disk format, plus the cheap checks preflight runs.

Nothing here imports torch: ``count`` reads only the LMDB metadata (``length`` / ``nextid``);
``check_readable`` adds a bounded sample of records whose pickles are checked against the
allow-list without being loaded (:func:`data.fastpickle.check_record`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional, Sequence, Union

import lmdb
from launcher.core.errors import ConfigError

from data.aselmdb import AseLmdbDataset, read_ids
from data.lmdb_dataset import LmdbDataset, encode_key, read_length, refusal
from data.shards import ASELMDB_SUFFIX, LMDB_SUFFIX, find_shards, lmdb_error, open_env
from data.util import one_line

#: Records per shard whose pickles ``check_readable`` checks besides the first, middle and last.
RANDOM_SAMPLE = 3

Dataset = Union[LmdbDataset, AseLmdbDataset]


def detect_format(path: str | os.PathLike) -> str:
    """``"lmdb"`` (FairChem v1 PyG pickles) or ``"aselmdb"`` (ASE database), by suffix or content."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file or folder (expected an LMDB file or a folder of "
                          f"*.lmdb / *.aselmdb shards)")
    if p.is_dir():
        pyg = any(q.is_file() for q in p.glob(f"*{LMDB_SUFFIX}"))
        ase = any(q.is_file() for q in p.glob(f"*{ASELMDB_SUFFIX}"))
        if pyg and ase:  # reading one kind would silently leave out the other
            raise ConfigError(f"{p}: folder holds both *{LMDB_SUFFIX} and *{ASELMDB_SUFFIX} shards "
                              f"(expected one kind)")
        if pyg:
            return "lmdb"
        if ase:
            return "aselmdb"
        find_shards(p, LMDB_SUFFIX)  # raises the precise "empty" / "no *.lmdb" error
    if p.suffix == ASELMDB_SUFFIX:
        return "aselmdb"
    if p.suffix == LMDB_SUFFIX:
        return "lmdb"
    try:
        with open_env(p).begin() as txn:
            if txn.get(b"nextid") is not None:
                return "aselmdb"
            if txn.get(b"length") is not None or txn.get(b"0") is not None:
                return "lmdb"
    except lmdb.Error as exc:
        raise lmdb_error(p, exc) from None
    raise ConfigError(f"{p}: neither a FairChem LMDB ('length'/'0' keys) nor an ASE LMDB "
                      f"('nextid' key)")


def open_dataset(path: str | os.PathLike, *, trust_pickles: bool = False) -> Dataset:
    """A reader for ``path`` (file or shard folder), picked by :func:`detect_format`."""
    if detect_format(path) == "aselmdb":
        return AseLmdbDataset(path)
    return LmdbDataset(path, trust_pickles=trust_pickles)


def sample_carries(path: str | os.PathLike, label: str, *, spread: bool = False,
                   trust_pickles: bool = False) -> tuple[Optional[bool], Sequence[int]]:
    """(whether a record at the first position of ``path`` (``spread``: first, middle or last) carries the label
    ``label`` (``"forces"``, ``"stress"``), the positions looked at); None when the data is empty or unreadable,
    which preflight reports by itself. An LMDB record is judged by its raw bytes (a pickled record names the
    attribute), so no torch is imported; an ASE-database record through its reader."""
    try:
        raw = detect_format(path) == "lmdb"
        ds = open_dataset(path, trust_pickles=trust_pickles)
    except Exception:  # noqa: BLE001
        return None, []
    try:
        n = len(ds)
        picks = (sorted({0, n // 2, n - 1}) if spread else [0]) if n else []
        if not picks:
            return None, picks
        return any((label.encode() in ds.get_bytes(i)) if raw else (getattr(ds[i], label) is not None)
                   for i in picks), picks
    except Exception:  # noqa: BLE001
        return None, []
    finally:
        close = getattr(ds, "close", None)
        if close is not None:
            close()


def _shard_table(path: str | os.PathLike) -> list[tuple[Path, int, bytes | None]]:
    """(shard, entries, key of its first entry) for every shard, from metadata only."""
    if detect_format(path) == "aselmdb":
        table = []
        for shard in find_shards(path, ASELMDB_SUFFIX):
            ids = read_ids(shard)
            table.append((shard, len(ids), encode_key(ids[0]) if ids else None))
        return table
    table = []
    for shard in find_shards(path, LMDB_SUFFIX):
        n = read_length(shard)
        table.append((shard, n, encode_key(0) if n else None))
    return table


def shard_lengths(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """(shard, entries) for every shard, from metadata only."""
    return [(shard, n) for shard, n, _ in _shard_table(path)]


def count(path: str | os.PathLike) -> int:
    """Number of structures, from ``length`` / ``nextid`` only (cheap; used by preflight)."""
    return sum(n for _, n in shard_lengths(path))


def check_readable(path: str | os.PathLike, *, trust_pickles: bool = False) -> None:
    """ConfigError unless ``path`` is a non-empty, openable dataset whose first entries exist.

    For FairChem LMDBs a sample of every shard (:func:`sample_positions`: the first, the middle, the last and
    :data:`RANDOM_SAMPLE` records spread across it, the same ones on every run, so a dry run and the launch
    give one verdict) is also checked against the pickle allow-list (unless ``trust_pickles``): FairChem's
    own reader unpickles every record without restriction, so for FairChem backends this sample is the only
    check before a record is loaded; it cannot prove the records it does not read harmless. The MACE trainer
    checks every record it reads. The values of the records a run selects: :func:`check_values`.
    """
    table = _shard_table(path)
    if sum(n for _, n, _ in table) == 0:
        raise ConfigError(f"{path}: dataset holds no entries")
    pickles = not trust_pickles and detect_format(path) == "lmdb"
    for shard, n, key in table:
        if key is None:
            continue
        try:
            with open_env(shard).begin() as txn:
                if txn.get(key) is None:
                    raise ConfigError(f"{shard}: key '{key.decode()}': first entry missing")
                if pickles:
                    _check_sample(shard, n, txn)
        except lmdb.Error as exc:
            raise lmdb_error(shard, exc) from None


def sample_positions(n: int, k: Optional[int] = None, seed: int = 0) -> list[int]:
    """The positions of ``range(n)`` preflight reads: the first, the middle, the last, and one seeded pick in
    each of ``k`` (default :data:`RANDOM_SAMPLE`) equal stretches, so the sample spans the whole set and is the
    same on every call."""
    k = RANDOM_SAMPLE if k is None else k
    rng = random.Random(f"{seed}:{n}")  # a str seed is hashed with SHA-512: the same on every machine
    picks = {0, n // 2, n - 1} if n else set()
    for j in range(k):
        lo, hi = j * n // k, (j + 1) * n // k
        if hi > lo:
            picks.add(rng.randrange(lo, hi))
    return sorted(picks)


def _check_sample(shard: Path, n: int, txn: lmdb.Transaction) -> None:
    from data.fastpickle import RefusedGlobal, check_record

    for i in sample_positions(n):
        raw = txn.get(encode_key(i))
        if raw is None:
            raise ConfigError(f"{shard}: key '{i}': entry missing (the shard's length is {n})")
        try:
            check_record(raw)
        except RefusedGlobal as exc:
            raise ConfigError(refusal(shard, i, exc)) from None
        except Exception as exc:  # noqa: BLE001 - a malformed pickle is bad input too
            raise ConfigError(f"{shard}: key '{i}': value does not unpickle "
                              f"({one_line(exc)})") from None


def _first(fields: dict, names: Sequence[str]) -> object:
    return next((fields[k] for k in names if fields.get(k) is not None), None)


def check_values(path: str | os.PathLike, indices: Sequence[int], *, trust_pickles: bool = False) -> None:
    """ConfigError naming the file and entry when one of the entries ``indices`` holds values no model can use
    (:func:`data.structure.values_problem`). FairChem LMDB records are decoded without torch; a record only
    torch can decode is left to the job's reader, which checks every record it loads."""
    from data.fastpickle import RefusedGlobal, record_fields
    from data.pyg import ENERGY_FIELDS, FORCES_FIELDS, STRESS_FIELDS
    from data.structure import values_problem
    from launcher.core.errors import BadRecord

    ds = open_dataset(path, trust_pickles=trust_pickles)
    try:
        for i in indices:
            k, local = ds.locate(int(i))
            if isinstance(ds, AseLmdbDataset):
                try:
                    ds[int(i)]
                except BadRecord as exc:
                    raise ConfigError(str(exc)) from None
                continue
            try:
                fields = record_fields(ds.get_bytes(int(i)))
            except RefusedGlobal:
                continue  # a trusted record naming other classes: only an unrestricted load reads it
            if fields is None or fields.get("pos") is None:
                continue
            try:
                bad = values_problem(fields["pos"], fields.get("cell"), _first(fields, ENERGY_FIELDS),
                                     _first(fields, FORCES_FIELDS), _first(fields, STRESS_FIELDS))
            except (TypeError, ValueError):
                continue  # an odd field type: the job's reader reports it in its own words
            if bad:
                raise ConfigError(f"{ds.shards[k]}: key '{local}': {bad}")
    finally:
        ds.close()
