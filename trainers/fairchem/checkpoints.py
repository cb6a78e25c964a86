"""FairChem checkpoints on disk: finding the newest, copying them atomically.

FairChem writes ``<native>/checkpoints/<timestamp_id>/checkpoint.pt`` (full training state) and
``best_checkpoint.pt`` (weights of the best validation, EMA applied, no optimizer); parameter
names carry DDP's ``module.`` prefix. FairChem itself writes them in place; under the launcher
the child makes each write atomic and links the finished file into the run's ``checkpoints/``.
Reading them needs torch, which the launcher process does not import: that work runs in the
FairChem env (:mod:`trainers.fairchem.child`); this module only finds and links/copies files.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

NATIVE_CHECKPOINT = "fairchem_checkpoint.pt"   # artifacts/: the checkpoint a run exports, in FairChem's own format


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
    """Make ``dst`` the content of ``src`` atomically: a hard link when possible, else a temp copy + os.replace.

    Links are safe: FairChem's checkpoint writes are made atomic by the child (new inode per write),
    and the launcher only ever replaces files. A 1.5 GB checkpoint is then never copied twice.
    """
    from trainers.fairchem.checkpoint_io import link_or_copy

    link_or_copy(str(src), str(dst))


def mirror(src: Path, dst: Path) -> bool:
    """Make ``dst`` (the run's standard copy) hold ``src`` unless it already does; True when it copied.

    The child mirrors each checkpoint as it writes it: a link (same file), or on another filesystem a copy
    written after ``src`` was complete (same size, newer). Either way it is not copied a second time. (A copy
    whose time stamp ties with ``src``'s, within the file system's clock tick, is made again: never a stale one
    kept.)
    """
    try:
        if dst.exists() and (dst.samefile(src) or (dst.stat().st_size == src.stat().st_size
                                                   and dst.stat().st_mtime_ns > src.stat().st_mtime_ns)):
            return False
    except OSError:
        pass
    atomic_copy(src, dst)
    return True


def remove_stale_temps(native_dir: Path) -> int:
    """Delete the temp files of checkpoint writes that were killed (the run dir lock is held); how many."""
    n = 0
    for d in checkpoint_dirs(native_dir):
        for p in d.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


class _Anything:
    """Stands in for whatever a checkpoint's pickle names besides plain containers (tensors, torch types)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs) -> "_Anything":
        return _Anything()

    def __setstate__(self, state) -> None:
        pass


_PLAIN = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
          ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex")}


def read_checkpoint_config(path: Path) -> Optional[dict]:
    """The FairChem ``config`` a checkpoint carries, read without torch (only the pickle's small ``data.pkl``
    of a zip-format torch file; tensors become placeholders). None when the file has none, or is not a
    zip-format torch file (a bare state dict, a legacy file)."""
    import pickle
    import zipfile

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in _PLAIN:
                return super().find_class(module, name)
            return _Anything

        def persistent_load(self, pid):
            return None

    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return None
            with zf.open(pkl) as fh:
                obj = Unpickler(fh).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError):
        return None
    cfg = obj.get("config") if isinstance(obj, dict) else None
    return _plain(cfg) if isinstance(cfg, dict) else None


def _plain(node):
    """The config with placeholders dropped (a config is plain YAML data)."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if not isinstance(v, _Anything)}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node if not isinstance(v, _Anything)]
    return node


# Names only a MACE model file carries in its pickle: the module path of a pickled model (``.model``), the
# symmetric contractions of its product blocks (state dicts), our MACE trainer's checkpoint key.
_MACE_MARKS = (b"mace.modules", b"symmetric_contractions", b"model_config")


def model_kind(path: Path) -> Optional[str]:
    """Which model a torch file holds, read without torch: ``"mace"``, the FairChem model name its config
    names (``equiformer_v2``, ``gemnet_oc``...), or None when it does not say (a bare FairChem state dict,
    a legacy file)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            head = zf.read(pkl) if pkl is not None else b""
    except (OSError, zipfile.BadZipFile):
        return None
    if any(mark in head for mark in _MACE_MARKS):
        return "mace"
    cfg = read_checkpoint_config(Path(path)) or {}
    model = cfg.get("model")
    name = model.get("name") if isinstance(model, dict) else model  # old configs: model: NAME
    return str(name) if isinstance(name, str) else None
