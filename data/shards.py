"""Finding shards and opening LMDB environments the way FairChem v1 does.

Shared by the PyG-LMDB and the ASE-LMDB readers. Environments are opened read-only with
``lock=False`` (no lock file, safe on shared file systems), one per shard, lazily and per
process: an LMDB handle must never cross a ``fork`` (DataLoader workers re-open their own).
"""
from __future__ import annotations

import bisect
import operator
import os
import struct
from pathlib import Path
from typing import IO, Any, Iterator

from launcher.core.errors import ConfigError

from data.util import one_line

LMDB_SUFFIX = ".lmdb"
ASELMDB_SUFFIX = ".aselmdb"


def find_shards(path: str | os.PathLike, suffix: str = LMDB_SUFFIX) -> list[Path]:
    """One file, or the sorted ``*<suffix>`` files of a folder; ConfigError when there are none."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file or folder (expected an LMDB file or a folder of "
                          f"*{suffix} shards)")
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ConfigError(f"{p}: not a regular file or folder")
    if not any(p.iterdir()):
        raise ConfigError(f"{p}: folder is empty (expected *{suffix} shards)")
    shards = sorted(q for q in p.glob(f"*{suffix}") if q.is_file())
    if not shards:
        raise ConfigError(f"{p}: folder holds no *{suffix} files")
    return shards


_ENVS: dict[tuple[int, int], Any] = {}
_ENVS_PID = os.getpid()


def _forget_inherited() -> None:
    """In a forked child: drop the parent's handles so the files can be opened afresh.

    py-lmdb refuses a second open of a file that is still open in the process, and after a
    fork the parent's handles look open; closing the child's copies (read-only, no lock file)
    only unmaps the child's view and leaves the parent untouched.
    """
    global _ENVS_PID
    for env in _ENVS.values():
        try:
            env.close()
        except Exception:  # noqa: BLE001 - a half-dead inherited handle is still forgotten
            pass
    _ENVS.clear()
    _ENVS_PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


def _stat(shard: Path) -> os.stat_result:
    try:
        return os.stat(shard)
    except OSError as exc:
        raise ConfigError(f"{shard}: cannot open ({exc.strerror})") from None


def _ident(shard: Path) -> tuple[int, int]:
    st = _stat(shard)
    return (st.st_dev, st.st_ino)


# LMDB's on-disk header (lmdb 0.9, 64-bit): pages 0 and 1 each hold a page header (16 bytes)
# then MDB_meta: magic, version (u32), address, mapsize (u64), two MDB_db of 48 bytes (the
# first one's leading u32 is the page size), last used page number and transaction id (u64).
_PAGE_HEADER = 16
_META = struct.Struct("<IIQQ I44x 48x QQ")
_META_MAGIC = 0xBEEFC0DE
_META_VERSION = 1
_CHECKED: set[tuple[int, int, int, int]] = set()


def _meta(shard: Path, fh: IO[bytes], offset: int) -> tuple[int, int, int]:
    fh.seek(offset + _PAGE_HEADER)
    head = fh.read(_META.size)
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] != _META_MAGIC:
        raise ConfigError(f"{shard}: not a readable LMDB file (no LMDB header at byte {offset})")
    if len(head) < _META.size:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise ConfigError(f"{shard}: empty file (expected an LMDB file)")
        raise ConfigError(f"{shard}: truncated LMDB file: {size} bytes, less than its two "
                          f"header pages")
    magic, version, _addr, _mapsize, psize, last_pgno, txnid = _META.unpack(head)
    if version != _META_VERSION:
        raise ConfigError(f"{shard}: LMDB format version {version}, expected {_META_VERSION}")
    return psize, last_pgno, txnid


def check_file(shard: Path, st: os.stat_result | None = None) -> None:
    """ConfigError unless ``shard`` holds every page its LMDB header says it uses.

    A cut-short copy or download would otherwise be mapped and read past its end, which kills
    the process with SIGBUS (no message, no cleanup). Two small plain reads, done once per file
    identity, size and modification time.
    """
    st = _stat(shard) if st is None else st
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return
    try:
        with open(shard, "rb") as fh:
            psize, last0, txn0 = _meta(shard, fh, 0)
            if psize < 512 or psize > 1 << 16 or psize & (psize - 1):
                raise ConfigError(f"{shard}: not a readable LMDB file (page size {psize} in its "
                                  f"header)")
            _psize1, last1, txn1 = _meta(shard, fh, psize)
    except OSError as exc:
        raise ConfigError(f"{shard}: cannot read ({exc.strerror or one_line(exc)})") from None
    last = last1 if txn1 > txn0 else last0
    need = (last + 1) * psize
    if st.st_size < need:
        raise ConfigError(f"{shard}: truncated LMDB file: {st.st_size} bytes, but its header "
                          f"says it uses {need} (an interrupted copy or download?)")
    _CHECKED.add(key)


def lmdb_error(shard: Path, exc: BaseException) -> ConfigError:
    """One line for an ``lmdb.Error`` met while reading ``shard``."""
    return ConfigError(f"{shard}: LMDB file is corrupt or unreadable ({one_line(exc)})")


def open_env(shard: Path, ident: tuple[int, int] | None = None) -> Any:
    """Open one shard read-only exactly as FairChem v1's ``LmdbDataset.connect_db``.

    LMDB allows one environment per file per process, so handles are shared process-wide,
    keyed by the file's identity (a replaced file gets a fresh handle), and forgotten after a
    fork: a child never uses its parent's handle. Every new handle is preceded by
    :func:`check_file`, so a truncated file is a ConfigError, never a SIGBUS.
    """
    import lmdb

    if _ENVS_PID != os.getpid():
        _forget_inherited()
    ident = _ident(shard) if ident is None else ident
    env = _ENVS.get(ident)
    if env is None:
        check_file(shard)
        try:
            env = lmdb.open(str(shard), subdir=False, readonly=True, lock=False, readahead=True,
                            meminit=False, max_readers=1)
        except lmdb.Error as exc:
            raise ConfigError(f"{shard}: not a readable LMDB file ({one_line(exc)})") from None
        _ENVS[ident] = env
    return env


def close_all() -> None:
    """Close every handle this process opened (tests and long-lived tools)."""
    if _ENVS_PID == os.getpid():
        for env in _ENVS.values():
            env.close()
    _ENVS.clear()


class EnvPool:
    """A dataset's shards resolved to the shared handles.

    Holds file identities, never handles, so that nothing but the process-wide table keeps an
    environment alive (what makes the after-fork cleanup complete).
    """

    def __init__(self, shards: list[Path]) -> None:
        self.shards = shards
        self._idents: dict[int, tuple[int, int]] = {}

    def get(self, k: int) -> Any:
        ident = self._idents.get(k)
        if ident is None:
            ident = self._idents[k] = _ident(self.shards[k])
        return open_env(self.shards[k], ident)

    def close(self) -> None:
        """Nothing to release per dataset: handles are shared (see :func:`close_all`)."""

    def __getstate__(self) -> dict:
        return {"shards": self.shards}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["shards"])


class ShardedDataset:
    """Global indexing over shards of known lengths; readers fill in ``__getitem__``."""

    def __init__(self, path: str | os.PathLike, suffix: str) -> None:
        self.path = Path(path)
        self.shards = find_shards(self.path, suffix)
        self.lengths = [self._shard_length(s) for s in self.shards]
        self._ends: list[int] = []
        total = 0
        for n in self.lengths:
            total += n
            self._ends.append(total)
        self._pool = EnvPool(self.shards)

    def _shard_length(self, shard: Path) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, position within that shard) of global index ``i``."""
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} entries in {self.path}")
        k = bisect.bisect_right(self._ends, i)
        return k, i - self.start(k)

    def start(self, k: int) -> int:
        """Global index of the first entry of shard ``k``."""
        return self._ends[k - 1] if k else 0

    def __getitem__(self, i: int) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        self._pool.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, shards={len(self.shards)}, n={len(self)})"
