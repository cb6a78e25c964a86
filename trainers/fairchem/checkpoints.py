"""FairChem checkpoints on disk: finding the newest, copying them atomically.

FairChem writes ``<native>/checkpoints/<timestamp_id>/checkpoint.pt`` (full training state) and
``best_checkpoint.pt`` (weights of the best validation, EMA applied, no optimizer); parameter
names carry DDP's ``module.`` prefix. Reading them needs torch, which the launcher process does not
import: that work runs in the FairChem env (:mod:`trainers.fairchem.child`); this module only
finds and copies files.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional


def checkpoint_dirs(native_dir: Path) -> List[Path]:
    root = Path(native_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir()]


def newest_first(native_dir: Path, name: str = "checkpoint.pt") -> List[Path]:
    """Every ``name`` under the timestamp folders, most recently written first."""
    found = [d / name for d in checkpoint_dirs(native_dir) if (d / name).is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def newest(native_dir: Path, name: str = "checkpoint.pt") -> Optional[Path]:
    """The most recently written ``name`` under any timestamp folder."""
    found = newest_first(native_dir, name)
    return found[0] if found else None


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy through a temp file + os.replace (FairChem overwrites its files in place, so no hard links)."""
    from launcher.layout import atomic_write_via

    atomic_write_via(Path(dst), lambda tmp: shutil.copyfile(src, tmp))
