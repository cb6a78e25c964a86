"""Preflight of ``data.replay`` for the core trainer, without torch: the elements of a spread sample of each
replay file's records (its first, middle, last and 3 seeded others, as preflight samples data) against the
elements of the model being fine-tuned, read from its manifest, our checkpoint or a mace ``.model`` archive.
The job checks every selected record again before the first update."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from launcher.core.replay_spec import replay_on


class _Tensor:
    """A stand-in for a pickled tensor: its storage key, dtype name, offset and size."""

    def __init__(self, storage: Any = None, offset: int = 0, size: Any = (), *args: Any) -> None:
        self.storage, self.offset, self.size = storage, int(offset), tuple(size)


class _Any:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Reader(pickle.Unpickler):
    """Reads a torch.save archive's object tree with stand-ins: nothing in the file runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if name.startswith("_rebuild_tensor"):
            return _Tensor
        return type(name, (_Any,), {})

    def persistent_load(self, pid: Any) -> Any:
        return (getattr(pid[1], "__name__", str(pid[1])), str(pid[2])) if isinstance(pid, tuple) and len(pid) > 2 else None


_DTYPES = {"LongStorage": np.int64, "IntStorage": np.int32, "DoubleStorage": np.float64, "FloatStorage": np.float32}


def _archive_elements(path: Path) -> Optional[List[int]]:
    """Atomic numbers held by a torch.save archive: our checkpoint's model config, or a pickled mace module's
    ``atomic_numbers`` buffer (read from its raw storage); None when the file does not say."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return None
            obj = _Reader(io.BytesIO(zf.read(pkl))).load()
            if isinstance(obj, dict):
                cfg = obj.get("model_config")
                zs = cfg.get("atomic_numbers") if isinstance(cfg, dict) else None
                return [int(z) for z in zs] if isinstance(zs, (list, tuple)) else None
            buf = (getattr(obj, "state", {}) or {}).get("_buffers", {}).get("atomic_numbers")
            if not isinstance(buf, _Tensor) or not buf.storage or buf.storage[0] not in _DTYPES:
                return None
            root = pkl[: -len("data.pkl")]
            raw = np.frombuffer(zf.read(f"{root}data/{buf.storage[1]}"), dtype=_DTYPES[buf.storage[0]])
            return [int(z) for z in raw[buf.offset: buf.offset + int(np.prod(buf.size or (1,)))]]
    except Exception:  # noqa: BLE001 - an odd file: the job checks the elements after loading it
        return None


def model_elements(spec: Any) -> Optional[Tuple[List[int], str]]:
    """(atomic numbers, file) of the model a finetune starts from, when readable without torch."""
    from launcher.core.layout import RunLayout, manifest_model_config

    cands: List[Path] = []
    if spec.model.manifest:
        cands.append(Path(spec.model.manifest))
    if spec.model_in:
        p = Path(spec.model_in)
        if p.is_dir():
            lay = RunLayout.of(p)
            cands += [lay.checkpoint, lay.manifest]
        else:
            cands.append(p)
    for p in cands:
        if not p.is_file():
            continue
        if p.suffix == ".json":
            try:
                m = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            zs = manifest_model_config(m).get("atomic_numbers") or m.get("z_table")
            if isinstance(zs, list) and zs:
                return [int(z) for z in zs], str(p)
            continue
        zs = _archive_elements(p)
        if zs:
            return zs, str(p)
    return None


def replay_element_problems(spec: Any) -> List[str]:
    """One line per replay file whose sampled records hold elements the model lacks."""
    if not replay_on(spec) or spec.task != "finetune":
        return []
    found = model_elements(spec)
    if found is None:
        return []
    from ase.data import chemical_symbols

    from data.datasets import count, open_dataset, sample_positions
    from data.fastpickle import record_fields

    known, model = set(found[0]), found[1]
    problems: List[str] = []
    for i, path in enumerate(spec.data.replay.paths):
        try:
            ds = open_dataset(path, trust_pickles=bool(spec.data.trust_pickles))
            picks = sample_positions(count(path))
        except Exception:  # noqa: BLE001 - preflight reports unreadable files under the same key
            continue
        try:
            for j in picks:
                try:
                    fields = record_fields(ds.get_bytes(j)) if hasattr(ds, "get_bytes") else None
                    numbers = fields.get("atomic_numbers") if fields else ds[j].numbers
                except Exception:  # noqa: BLE001 - the job's reader gives its verdict
                    continue
                extra = sorted({int(z) for z in np.asarray(numbers).reshape(-1)} - known)
                if extra:
                    problems.append(f"data.replay.paths[{i}]: {path}: entry {j} holds "
                                    f"{', '.join(chemical_symbols[z] for z in extra)}, which the model ({model}) lacks "
                                    f"(its elements: {', '.join(chemical_symbols[z] for z in sorted(known))})")
                    break
        finally:
            ds.close()
    return problems
