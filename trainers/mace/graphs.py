"""From LMDB entries to mace's ``AtomicData`` graphs (one structure at a time), and collation.

The trainer streams them (``trainers.mace.stream``) or caches them; evaluate / infer stream theirs
(``trainers.mace.predict.EvalGraphs``): no path here reads a whole split.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.errors import ConfigError


def split_indices(spec: Any, split: str, n: int, *, active: bool) -> np.ndarray:
    """Indices of ``split`` used by this run; ``data.indices``/``data.indices_path`` apply to the active split."""
    from data.indices import select_split_indices

    return select_split_indices(spec.data, split, n, active=active)


def check_elements(structures: Sequence[Any], zs: Sequence[int], *, what: str) -> None:
    """Elements a model cannot represent: one clear error instead of mace's IndexError."""
    have = {int(z) for z in zs}
    missing = sorted({int(z) for s in structures for z in s.numbers} - have)
    if missing:
        from ase.data import chemical_symbols

        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
        raise ConfigError(f"{what}: the model has no parameters for elements {names}; it knows Z={sorted(have)}")


def atomic_table(zs: Sequence[int]) -> Any:
    from mace.tools.utils import AtomicNumberTable

    return AtomicNumberTable([int(z) for z in zs])


def to_graph(s: Any, table: Any, r_max: float, heads: Sequence[str], head: str) -> Any:
    """One :class:`data.structure.Structure` as mace's ``AtomicData`` (torch default dtype), labelled for
    ``head``; a missing energy, forces or stress label gets weight 0 (stress: 3x3, eV/Å^3, ASE's sign, as mace's
    own data carries it)."""
    from mace.data import AtomicData, Configuration

    if not (math.isfinite(r_max) and r_max > 0):  # a NaN cutoff stalls the neighbour search
        raise ConfigError(f"r_max: the model's cutoff is {r_max}; expected a finite number > 0")
    props: Dict[str, Any] = {}
    weights: Dict[str, float] = {}
    if s.energy is not None:
        props["energy"] = float(s.energy)
    else:
        weights["energy"] = 0.0
    if s.forces is not None:
        props["forces"] = np.asarray(s.forces, dtype=np.float64)
    else:
        weights["forces"] = 0.0
    if s.stress is not None:
        props["stress"] = np.asarray(s.stress, dtype=np.float64).reshape(3, 3)
    else:
        weights["stress"] = 0.0
    cfg = Configuration(
        atomic_numbers=np.asarray(s.numbers, dtype=np.int64),
        positions=np.asarray(s.positions, dtype=np.float64),
        properties=props,
        property_weights=weights,
        cell=np.asarray(s.cell, dtype=np.float64),
        pbc=tuple(bool(p) for p in s.pbc),
        head=head,
    )
    return AtomicData.from_config(cfg, z_table=table, cutoff=float(r_max), heads=list(heads))


def to_atomic_data(structures: Sequence[Any], zs: Sequence[int], r_max: float, heads: Sequence[str],
                   head: str, *, progress: bool = False, mininterval: float = 0.5) -> List[Any]:
    """``AtomicData`` (torch default dtype) for each structure, labelled for ``head``; ``mininterval``:
    seconds between refreshes of the bar (``train.progress_mininterval``)."""
    from data.util import progress_bar

    table = atomic_table(zs)
    it: Any = progress_bar(structures, progress, desc="graphs", unit="struct", mininterval=mininterval, leave=False)
    return [to_graph(s, table, r_max, heads, head) for s in it]


def collate(items: Sequence[Any]) -> Any:
    from mace.tools.torch_geometric.batch import Batch

    return Batch.from_data_list(list(items))


def record_indices(path: Path, selected: Dict[str, np.ndarray]) -> Path:
    """The indices each split used, at ``RunLayout.indices_json(...)`` (the file is itself a valid
    indices_path)."""
    from data.indices import write_indices_record

    return write_indices_record(Path(path), selected)


def sha_sources(spec: Any, splits: Sequence[str]) -> Dict[str, Optional[str]]:
    return {s: getattr(spec.data, s) for s in splits if getattr(spec.data, s)}
