"""Turning FairChem's ``*_predictions.npz`` into our evaluation files.

FairChem's ``predict`` writes one row per unique ``"{sid}_{fid}"`` id, sorted by that string, and
forces of free atoms only (``fixed == 0``). We map ids back to dataset indices from the labels
in the LMDB, compute the metrics with the shared :mod:`launcher.core.metrics`, and write the same
files the core trainer writes. Forces of fixed atoms, which FairChem does not output, are NaN
in ``predictions_forces.npz`` and left out of the force metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.errors import ConfigError


@dataclass
class Labels:
    """What evaluation needs from the dataset, in dataset order."""

    ids: List[str]
    natoms: np.ndarray              # (n,)
    energy: Optional[np.ndarray]    # (n,) or None when unlabelled
    forces: Optional[List[np.ndarray]]
    fixed: List[np.ndarray]         # per structure, bool (True = fixed)
    groups: Optional[List[Optional[str]]] = None   # label under eval.group_by (None: key absent); None: not read


def _plain(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def fairchem_id(data: Any) -> str:
    """The id FairChem's predict gives a record: ``sid_fid`` (or ``sid`` when there is no fid)."""
    sid = _plain(getattr(data, "sid", None)) if "sid" in data else None
    if "fid" in data:
        return f"{sid}_{_plain(data.fid)}"
    return f"{sid}"


def read_labels(path: str | Path, with_forces: bool = True, trust_pickles: bool = False,
                group_by: Optional[str] = None) -> Labels:
    """Ids, sizes, energies and forces of every record of an LMDB (file or shard folder).

    ``group_by``: also each record's label under that key (its ``info`` entry, else a scalar field of
    the record, as FairChem LMDBs carry tags), read in the same pass over the evaluated records.
    """
    from data.lmdb_dataset import LmdbDataset
    from data.pyg import _fields, pyg_to_structure
    from launcher.core.metrics import group_label

    ds = LmdbDataset(path, trust_pickles=trust_pickles)
    ids: List[str] = []
    natoms: List[int] = []
    energies: List[Optional[float]] = []
    forces: List[Optional[np.ndarray]] = []
    fixed: List[np.ndarray] = []
    groups: List[Optional[str]] = []
    try:
        for i in range(len(ds)):
            data = ds.get_data(i)
            try:
                s = pyg_to_structure(data, i)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{path}: entry {i}: {exc}") from None
            ids.append(fairchem_id(data))
            natoms.append(int(s.natoms))
            energies.append(s.energy)
            forces.append(s.forces if with_forces else None)
            fixed.append(np.asarray(s.fixed, dtype=bool).reshape(-1) if s.fixed is not None
                         else np.zeros(int(s.natoms), dtype=bool))
            if group_by:
                label = group_label(s.info, group_by)
                groups.append(label if label is not None else group_label(None, group_by, _fields(data)))
    finally:
        ds.close()
    has_e = all(e is not None for e in energies) and bool(energies)
    has_f = with_forces and all(f is not None for f in forces) and bool(forces)
    return Labels(
        ids=ids,
        natoms=np.asarray(natoms, dtype=np.int64),
        energy=np.asarray(energies, dtype=np.float64) if has_e else None,
        forces=[np.asarray(f, dtype=np.float64).reshape(-1, 3) for f in forces] if has_f else None,
        fixed=fixed,
        groups=groups if group_by else None,
    )


def duplicate_ids(ids: Sequence[str]) -> List[str]:
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    return dup


def find_predictions(results_dir: Path) -> Path:
    found = sorted(Path(results_dir).glob("*_predictions.npz"))
    if not found:
        raise RuntimeError(f"FairChem wrote no *_predictions.npz in {results_dir}")
    return found[0]


def align(npz_path: Path, labels: Labels) -> Dict[str, Any]:
    """Predictions in dataset order: energy (n,), per-structure forces with NaN rows for fixed atoms."""
    with np.load(npz_path, allow_pickle=True) as z:
        pred_ids = [str(x) for x in z["ids"]]
        energy = np.asarray(z["energy"], dtype=np.float64).reshape(-1)
        has_forces = "forces" in z.files
        flat = np.asarray(z["forces"], dtype=np.float64).reshape(-1, 3) if has_forces else None
        chunk_idx = np.asarray(z["chunk_idx"], dtype=np.int64) if "chunk_idx" in z.files else None
    where = {pid: k for k, pid in enumerate(pred_ids)}
    missing = [i for i in labels.ids if i not in where]
    if missing or len(pred_ids) != len(labels.ids):
        raise RuntimeError(f"{npz_path}: {len(pred_ids)} predictions for {len(labels.ids)} structures "
                           f"({len(missing)} ids without a prediction, e.g. {missing[:3]})")
    order = np.asarray([where[i] for i in labels.ids], dtype=np.int64)
    out: Dict[str, Any] = {"energy": energy[order], "forces": None}
    if flat is not None:
        per = np.split(flat, chunk_idx) if chunk_idx is not None and chunk_idx.size else [flat]
        forces = []
        for dataset_pos, k in enumerate(order):
            free = ~labels.fixed[dataset_pos]
            full = np.full((int(labels.natoms[dataset_pos]), 3), np.nan)
            if per[k].shape[0] != int(free.sum()):
                raise RuntimeError(f"{npz_path}: structure {labels.ids[dataset_pos]}: {per[k].shape[0]} force rows "
                                   f"for {int(free.sum())} free atoms")
            full[free] = per[k]
            forces.append(full)
        out["forces"] = forces
    return out


def evaluate_predictions(
    npz_path: Path,
    labels: Labels,
    index: Sequence[int],
    out_dir: Path,
    *,
    with_metrics: bool,
    energy_only: bool = False,
    group_by: Optional[str] = None,
    note: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Write metrics.json/csv (when ``with_metrics``), predictions.csv and predictions_forces.npz.

    With ``with_metrics`` also parity.png and, when ``group_by`` is set (``labels`` read with it),
    errors_by_group.csv; ``note`` gets the one-line warning of a key no record carries.
    """
    from launcher.core.metrics import (EvalArrays, compute_metrics, resolve_groups, write_eval_outputs,
                                       write_group_outputs)

    pred = align(npz_path, labels)
    forces = None if energy_only else pred["forces"]
    metrics = None
    if with_metrics:
        if labels.energy is None:
            raise ConfigError("eval: the dataset has no energy labels; use task=infer for predictions only")
        pf = tf = None
        if forces is not None and labels.forces is not None:
            free = np.concatenate([~np.isnan(f[:, 0]) for f in forces]) if forces else np.zeros(0, bool)
            pf = np.concatenate(forces)[free] if forces else np.zeros((0, 3))
            tf = np.concatenate(labels.forces)[free] if forces else np.zeros((0, 3))
        metrics = compute_metrics(pred["energy"], labels.energy, labels.natoms, pf, tf)
        groups = resolve_groups(labels.groups or [], group_by, note) if group_by else None
        with_f = forces is not None and labels.forces is not None
        write_group_outputs(Path(out_dir), metrics, groups,
                            EvalArrays(pred["energy"], labels.energy, labels.natoms, forces if with_f else None,
                                       labels.forces if with_f else None))
    write_eval_outputs(Path(out_dir), metrics, index, pred["energy"], labels.natoms, forces)
    return metrics or {}
