"""Writing FairChem v1 LMDB shards, atomically.

Everything is written into a hidden temporary folder beside the target and renamed into place
at the end, so a crash or Ctrl-C never leaves a half-written dataset under the final name.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from launcher.core.errors import ConfigError

from data.lmdb_dataset import LENGTH_KEY, encode_key
from data.structure import Structure
from data.util import one_line

MAP_SIZE = 1 << 40  # virtual; the file only grows to what is written
PICKLE_PROTOCOL = 4  # readable by every Python FairChem v1 supports
COMMIT_EVERY = 1000
DATASET_SUFFIXES = (".lmdb", ".lmdb-lock", ".aselmdb")  # what --overwrite may delete


def shard_names(n_shards: int) -> list[str]:
    """Zero-padded names so that sorted order is shard order."""
    return [f"data.{k:04d}.lmdb" for k in range(n_shards)]


class _SameLabels:
    """All entries must carry the same labels, or FairChem's collate breaks mid-epoch. Checked as each
    entry is written (the input may be a stream), against the first one."""

    LABELS = ("energy", "forces", "stress")

    def __init__(self) -> None:
        self.first: tuple[bool, ...] | None = None

    def __call__(self, s: Structure, index: int) -> None:
        have = tuple(getattr(s, label) is not None for label in self.LABELS)
        if self.first is None:
            self.first = have
        elif have != self.first:
            label = next(lb for lb, a, b in zip(self.LABELS, have, self.first) if a != b)
            what = (f"lacks '{label}' while entry 0 has it" if self.first[self.LABELS.index(label)]
                    else f"has '{label}' while entry 0 lacks it")
            raise ConfigError(f"entry {index}: {what} (all entries of a dataset must carry the same "
                              f"labels)")


def _write_shard(path: Path, structures: Iterable[Structure], start: int, bar,
                 same: _SameLabels) -> int:
    import lmdb

    from data.pyg import structure_to_pyg

    env = lmdb.open(str(path), subdir=False, map_size=MAP_SIZE, lock=False, meminit=False,
                    readahead=False)
    n = 0
    try:
        txn = env.begin(write=True)
        for s in structures:
            same(s, start + n)
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
    above ``out`` must be a writable folder. ``--overwrite`` replaces a file, a link or a folder of
    LMDB shards, never a folder holding anything else (that would be deleted with it) or a device.
    """
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ConfigError(f"{out}: already exists (pass --overwrite to replace it)")
        _check_replaceable(out)
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{out}: cannot be created: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{out}: cannot be created: no permission to write in {parent}")


def _check_replaceable(out: Path) -> None:
    if out.is_symlink() or out.is_file():
        return
    if not out.is_dir():
        raise ConfigError(f"{out}: not a regular file or folder (not replaced, even with --overwrite)")
    others = sorted(p.name for p in out.iterdir()
                    if not (p.is_file() and p.name.endswith(DATASET_SUFFIXES)))
    if others:
        raise ConfigError(f"{out}: --overwrite replaces a dataset, but this folder also holds "
                          f"{others[0]!r}{' and more' if len(others) > 1 else ''} (not replaced)")


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    old = None
    if out.exists() or out.is_symlink():
        check_target(out, overwrite)  # it may have appeared while we were writing
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:  # the new output is in place: failing to delete the old one must not undo that
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def replace_all(pairs: Sequence[tuple[Path, Path]], overwrite: bool) -> None:
    """Move each finished ``(staged, out)`` into place, with SIGINT / SIGTERM held back meanwhile."""
    from data.interrupt import committing

    with committing():
        for staged, out in pairs:
            _replace(staged, out, overwrite)


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``mkdir -p folder`` would create, deepest first (to undo it)."""
    missing = []
    p = folder.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


@contextmanager
def staging(where: Path, name: str) -> Iterator[Path]:
    """A new hidden folder ``where/.NAME.tmp-*`` to write into, removed when the body ends.

    On an error or interruption the folders made for it (``where`` and above) go too, so a failed
    command leaves the file system as it found it; the body moves its finished output out first.
    """
    created = _missing_folders(where)
    tmp = None
    try:
        where.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(where, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=where))
        yield tmp
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_staging(where: Path, name: str) -> list[Path]:
    """Remove ``where/.NAME.tmp-PID-*`` folders whose process is gone (killed outright: SIGKILL, or a
    crash no cleanup survives); the folders of a live process are left alone."""
    removed = []
    for p in where.glob(f".{name}.tmp-*-*"):
        pid = p.name[len(f".{name}.tmp-"):].split("-", 1)[0]
        if p.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; one that holds something now is not ours alone
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def write_lmdb(structures: Sequence[Structure], out: str | os.PathLike, *, shards: int = 1,
               overwrite: bool = False, progress: bool = True, desc: str = "write") -> list[Path]:
    """Write ``structures`` (a list, or any sequence that reads entry ``i`` on access) in order as
    FairChem-layout LMDB and return the shard paths.

    ``out`` ending in ``.lmdb`` with ``shards == 1`` is one file; otherwise ``out`` is a folder
    of ``shards`` contiguous ``data.NNNN.lmdb`` files (global index = input order). Written into a
    temporary folder beside ``out`` and moved into place at the end.
    """
    out = Path(out)
    check_write(structures, out, shards, overwrite)
    try:
        with staging(out.parent, out.name) as tmp:
            names = write_staged(structures, tmp / out.name, shards, progress, desc)
            replace_all([(tmp / out.name, out)], overwrite)
    except OSError as exc:  # not writable after all, disk full, ...: one line naming OUT
        raise ConfigError(f"{out}: cannot be written ({exc.strerror or one_line(exc)})") from None
    return [out] if _single_file(out, shards) else [out / n for n in names]


def check_write(structures: Sequence[Structure], out: Path, shards: int, overwrite: bool) -> None:
    """Everything :func:`write_lmdb` refuses, before anything is written."""
    check_shards(shards)
    if len(structures) == 0:
        raise ConfigError(f"{out}: nothing to write (no structures)")
    if shards > len(structures):
        raise ConfigError(f"--shards: {shards} shards for {len(structures)} structures "
                          f"(expected at most one shard per structure)")
    check_target(out, overwrite)


def _single_file(out: Path, shards: int) -> bool:
    return out.suffix == ".lmdb" and shards == 1


def check_shards(shards: object) -> None:
    """``--shards`` must be a positive integer."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ConfigError(f"--shards: expected a positive integer, got {shards!r}")


def write_staged(structures: Sequence[Structure], dest: Path, shards: int, progress: bool,
                 desc: str) -> list[str]:
    """Write ``dest``: one LMDB file (a ``.lmdb`` name and one shard) or a folder of shards.

    Returns the names written (``[dest.name]`` for a file, the shard names otherwise).
    """
    single_file = _single_file(dest, shards)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(structures), desc=desc, unit="struct", mininterval=0.5)
    try:
        same = _SameLabels()
        if single_file:
            _write_shard(dest, structures, 0, bar, same)
            dest.chmod(0o644)
            return [dest.name]
        dest.mkdir()
        names = shard_names(shards)
        for name, idx in zip(names, np.array_split(np.arange(len(structures)), shards)):
            _write_shard(dest / name, (structures[int(i)] for i in idx), int(idx[0]), bar, same)
        return names
    finally:
        if bar is not None:
            bar.close()
