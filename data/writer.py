"""Writing FairChem v1 LMDB shards, atomically.

Everything is written into a hidden temporary folder beside the target and renamed into place
at the end, so a crash or Ctrl-C never leaves a half-written dataset under the final name.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from launcher.core.errors import ConfigError

from data.lmdb_dataset import LENGTH_KEY, encode_key
from data.structure import Structure
from data.util import one_line

MAP_SIZE = 1 << 40  # virtual; the file only grows to what is written
PICKLE_PROTOCOL = 4  # readable by every Python FairChem v1 supports
COMMIT_EVERY = 1000


def shard_names(n_shards: int) -> list[str]:
    """Zero-padded names so that sorted order is shard order."""
    return [f"data.{k:04d}.lmdb" for k in range(n_shards)]


def _check_uniform(structures: Sequence[Structure]) -> None:
    """All entries must carry the same labels, or FairChem's collate breaks mid-epoch."""
    for label in ("energy", "forces", "stress"):
        have = [getattr(s, label) is not None for s in structures]
        if any(have) and not all(have):
            bad = have.index(False)
            raise ConfigError(f"entry {bad}: lacks '{label}' while other entries have it "
                              f"(all entries of a dataset must carry the same labels)")


def _write_shard(path: Path, structures: Iterable[Structure], start: int, bar) -> int:
    import lmdb

    from data.pyg import structure_to_pyg

    env = lmdb.open(str(path), subdir=False, map_size=MAP_SIZE, lock=False, meminit=False,
                    readahead=False)
    n = 0
    try:
        txn = env.begin(write=True)
        for s in structures:
            record = structure_to_pyg(s, default_sid=start + n)
            txn.put(encode_key(n), pickle.dumps(record, protocol=PICKLE_PROTOCOL))
            n += 1
            if bar is not None:
                bar.update(1)
            if n % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(LENGTH_KEY, pickle.dumps(n, protocol=PICKLE_PROTOCOL))
        txn.commit()
        env.sync(True)
    finally:
        env.close()
    return n


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite``, and a place ``out`` cannot be written to.

    Checked before any work is done and without creating anything: the nearest existing folder
    above ``out`` must be a writable folder.
    """
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigError(f"{out}: already exists (pass --overwrite to replace it)")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{out}: cannot be created: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{out}: cannot be created: no permission to write in {parent}")


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    old = None
    if out.exists() or out.is_symlink():
        check_target(out, overwrite)  # it may have appeared while we were writing
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def write_lmdb(structures: Sequence[Structure], out: str | os.PathLike, *, shards: int = 1,
               overwrite: bool = False, progress: bool = True, desc: str = "write") -> list[Path]:
    """Write ``structures`` in order as FairChem-layout LMDB and return the shard paths.

    ``out`` ending in ``.lmdb`` with ``shards == 1`` is one file; otherwise ``out`` is a folder
    of ``shards`` contiguous ``data.NNNN.lmdb`` files (global index = input order).
    """
    out = Path(out)
    check_shards(shards)
    if len(structures) == 0:
        raise ConfigError(f"{out}: nothing to write (no structures)")
    if shards > len(structures):
        raise ConfigError(f"--shards: {shards} shards for {len(structures)} structures "
                          f"(expected at most one shard per structure)")
    check_target(out, overwrite)
    _check_uniform(structures)
    try:
        return _write(structures, out, shards, overwrite, progress, desc)
    except OSError as exc:  # not writable after all, disk full, ...: one line naming OUT
        raise ConfigError(f"{out}: cannot be written ({exc.strerror or one_line(exc)})") from None


def check_shards(shards: object) -> None:
    """``--shards`` must be a positive integer."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ConfigError(f"--shards: expected a positive integer, got {shards!r}")


def _write(structures: Sequence[Structure], out: Path, shards: int, overwrite: bool,
           progress: bool, desc: str) -> list[Path]:
    single_file = out.suffix == ".lmdb" and shards == 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(structures), desc=desc, unit="struct", mininterval=0.5)
    try:
        bounds = np.array_split(np.arange(len(structures)), shards)
        names = [out.name] if single_file else shard_names(shards)
        for name, idx in zip(names, bounds):
            start = int(idx[0])
            _write_shard(tmp / name, (structures[int(i)] for i in idx), start, bar)
        if single_file:
            (tmp / out.name).chmod(0o644)
            _replace(tmp / out.name, out, overwrite)
            tmp.rmdir()
            return [out]
        tmp.chmod(0o755)
        _replace(tmp, out, overwrite)
        return [out / name for name in names]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
