"""Which dataset entries a run uses, exactly per parameters.md.

Precedence: explicit ``data.indices`` > ``data.indices_path`` > per-split sampling
(``data.<split>_indices``: ``indices_path``, ``shuffle``, ``seed``, ``max_samples``).
Shuffling uses ``numpy.random.Generator(PCG64(seed))`` so the same inputs give the same
indices on every machine and numpy version; the result is recorded in the run's logs.
"""
from __future__ import annotations

import json
import os
import secrets
from numbers import Integral
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from launcher.core.errors import ConfigError

# an index list is read whole (its entries are what sampling keeps): bounded, not unlimited
MAX_INDICES_BYTES = 1 << 30


def _as_index_array(values: Any, n: int, key: str) -> np.ndarray:
    """Validate a list of indices against a dataset of ``n`` entries."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ConfigError(f"{key}: expected a flat list of integers, got shape {values.shape}",
                              key=key)
        if values.size and values.dtype.kind not in "iu":
            raise ConfigError(f"{key}: expected integers, got dtype {values.dtype}", key=key)
        values = values.tolist()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise ConfigError(f"{key}: expected a list of integers, got {type(values).__name__}",
                          key=key)
    for pos, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise ConfigError(f"{key}: entry {pos} is {v!r}, expected an integer", key=key)
    arr = np.asarray(list(values), dtype=np.int64).reshape(-1)
    if arr.size == 0:
        raise ConfigError(f"{key}: the list of indices is empty", key=key)
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise ConfigError(f"{key}: index {int(bad[0])} out of range for a dataset of {n} entries "
                          f"(expected 0..{n - 1})", key=key)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{key}: index {int(uniq[counts > 1][0])} appears "
                          f"{int(counts[counts > 1][0])} times (expected unique indices)", key=key)
    return arr


def load_indices_json(path: str | os.PathLike, key: str, split: str | None = None) -> Any:
    """Read a JSON list of indices (or a ``{split: [...]}`` record when ``split`` is given)."""
    from launcher.core.readers import load_json

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise ConfigError(f"{key}: {p}: no such file (expected a JSON list of indices)", key=key)
    obj = load_json(p, key=key, max_bytes=MAX_INDICES_BYTES)
    if isinstance(obj, dict) and split is not None and split in obj:
        obj = obj[split]
    if not isinstance(obj, list):
        raise ConfigError(f"{key}: {p}: expected a JSON list of indices, got "
                          f"{type(obj).__name__}", key=key)
    return obj


def select_indices(n: int, *, indices: Sequence[int] | None = None,
                   indices_path: str | os.PathLike | None = None,
                   max_samples: int | None = None, shuffle: bool = False, seed: int = 0,
                   split_indices_path: str | os.PathLike | None = None,
                   split: str = "train") -> np.ndarray:
    """The int64 indices into a dataset of ``n`` entries that the ``split`` split uses.

    ``indices`` / ``indices_path`` are ``data.indices`` / ``data.indices_path`` (they win, in
    that order, and are used as given); otherwise start from ``split_indices_path`` (or
    ``0..n-1``), permute with ``PCG64(seed)`` if ``shuffle``, then keep the first
    ``max_samples`` (at most all of them). Every problem is a ConfigError naming the key.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
        raise ConfigError(f"dataset size must be a non-negative integer, got {n!r}")
    n = int(n)
    if n == 0:
        raise ConfigError(f"data.{split}: dataset holds no entries")
    if indices is not None:
        return _as_index_array(indices, n, "data.indices")
    if indices_path is not None:
        values = load_indices_json(indices_path, "data.indices_path", split)
        return _as_index_array(values, n, "data.indices_path")
    prefix = f"data.{split}_indices"
    if split_indices_path is not None:
        key = f"{prefix}.indices_path"
        base = _as_index_array(load_indices_json(split_indices_path, key, split), n, key)
    else:
        base = np.arange(n, dtype=np.int64)
    if isinstance(shuffle, (bool, np.bool_)):
        shuffle = bool(shuffle)
    else:
        raise ConfigError(f"{prefix}.shuffle: expected true or false, got {shuffle!r}",
                          key=f"{prefix}.shuffle")
    if shuffle:
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ConfigError(f"{prefix}.seed: expected a non-negative integer, got {seed!r}",
                              key=f"{prefix}.seed")
        base = base[np.random.Generator(np.random.PCG64(int(seed))).permutation(base.size)]
    if max_samples is not None:
        if (isinstance(max_samples, bool) or not isinstance(max_samples, Integral)
                or max_samples < 1):
            raise ConfigError(f"{prefix}.max_samples: expected a positive integer or null, got "
                              f"{max_samples!r}", key=f"{prefix}.max_samples")
        base = base[: int(max_samples)]
    return np.ascontiguousarray(base, dtype=np.int64)


def write_indices_record(path: str | os.PathLike,
                         selected: Mapping[str, Sequence[int] | np.ndarray]) -> Path:
    """Write ``{split: [indices]}`` as JSON atomically and durably (the run's record of what it used).

    The file is itself a valid ``indices_path`` for any of its splits. Its permissions follow
    the umask like any other run file (created 0666 & ~umask; the umask is never changed), and
    the file and its folder are fsynced, so a crash leaves the old record or the new one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {str(k): [int(i) for i in np.asarray(v).reshape(-1)] for k, v in selected.items()}
    tmp = p.parent / f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)
    return p


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(dfd)


def select_split_indices(data_spec: Any, split: str, n: int, *, active: bool) -> np.ndarray:
    """Indices of ``split`` a run uses, from its ``data`` section (``launcher.core.schema.DataSpec``).

    ``data.indices`` / ``data.indices_path`` apply only to the active split (train for training
    tasks, the evaluated split otherwise); every split has its own sampling block.
    """
    sampling = getattr(data_spec, f"{split}_indices")
    return select_indices(
        n,
        indices=data_spec.indices if active else None,
        indices_path=data_spec.indices_path if active else None,
        max_samples=sampling.max_samples,
        shuffle=sampling.shuffle,
        seed=sampling.seed,
        split_indices_path=sampling.indices_path,
        split=split,
    )
