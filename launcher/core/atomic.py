"""Atomic file writes and append-only JSON lines: readers never see half a file.

A temp file beside the target, fsync, then ``os.replace``; files get the permissions a plain
``open()`` would give (the temp file is created with mode 0666 and the kernel applies the umask, so
the process umask is never read or changed). A writer killed mid-write leaves its temp file
(``.NAME.RANDOM.tmp``); :func:`remove_stale_temps` removes them when the next job takes the run
directory. torch is imported only by :func:`atomic_torch_save`, when called.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Dict


TEMP_SUFFIX = ".tmp"


def _create_temp(path: Path) -> Path:
    """A new empty file ``.NAME.RANDOM.tmp`` beside ``path``, mode 0666 less the umask (as open() gives)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name beside {path}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temp files (or FairChem's child's, which are named alike)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3


def remove_stale_temps(root: Path) -> list:
    """Delete the temp files of writes that never finished (a killed job) under ``root``.

    Only call it while holding the run directory's lock: no writer is active then.
    """
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if is_temp_name(name):
                p = Path(dirpath) / name
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def atomic_write_via(path: Path, write: Callable[[str], None]) -> None:
    """Have ``write(tmp_path)`` fill a temp file beside ``path``, then os.replace it into place.

    Readers never see half a file; the file gets the permissions a plain open() would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(_create_temp(path))
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_via(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temp file + os.replace (checkpoints are never half written)."""
    import torch

    atomic_write_via(path, lambda tmp: torch.save(obj, tmp))


def append_jsonl(path: Path, record: Dict[str, Any]) -> None:
    """One line per record, flushed at once, so a crash loses at most the line being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        fh.flush()


def read_jsonl(path: Path) -> list:
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a hard kill
    return out
