"""Atomic file writes and append-only JSON lines: readers never see half a file.

A temp file beside the target, fsync, then ``os.replace``; files get the permissions a plain
``open()`` would give. torch is imported only by :func:`atomic_torch_save`, when called.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict


def _umask_mode() -> int:
    """0666 less the process umask: what a plain open() would give (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_via(path: Path, write: Callable[[str], None]) -> None:
    """Have ``write(tmp_path)`` fill a temp file beside ``path``, then os.replace it into place.

    Readers never see half a file; the file gets the permissions a plain open() would give
    (mkstemp's are 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
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
