"""Evaluation metrics and output files shared by every backend (pure numpy, no torch).

Both the core MACE trainer and the FairChem runner call these two functions, so that
``run_dir/eval/`` holds the same files with the same columns whichever backend made them:

- ``metrics.json`` / ``metrics.csv``: energy MAE/RMSE (total and per atom), force MAE/RMSE, counts
- ``predictions.csv``: index, energy, energy_per_atom, natoms
- ``predictions_forces.npz``: ``forces`` (all atoms, concatenated) and ``natoms`` to split them
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from launcher.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

METRIC_KEYS = (
    "n_structures", "n_atoms",
    "energy_mae", "energy_rmse", "energy_mae_per_atom", "energy_rmse_per_atom",
    "force_mae", "force_rmse",
)


def _concat(forces: Any) -> np.ndarray:
    if isinstance(forces, np.ndarray) and forces.ndim == 2:
        return forces.astype(np.float64)
    parts = [np.asarray(f, dtype=np.float64).reshape(-1, 3) for f in forces]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 3))


def compute_metrics(
    pred_energy: Sequence[float],
    true_energy: Sequence[float],
    natoms: Sequence[int],
    pred_forces: Any = None,
    true_forces: Any = None,
) -> Dict[str, Optional[float]]:
    """Energy and force errors. Forces: an (N_atoms, 3) array or a list of per-structure arrays.

    Force errors are over force components (as mace's tables); ``None`` where forces are absent.
    """
    pe = np.asarray(pred_energy, dtype=np.float64).reshape(-1)
    te = np.asarray(true_energy, dtype=np.float64).reshape(-1)
    na = np.asarray(natoms, dtype=np.float64).reshape(-1)
    if not (pe.shape == te.shape == na.shape):
        raise ValueError(f"compute_metrics: {pe.size} predicted energies, {te.size} true energies, {na.size} natoms")
    de = pe - te
    out: Dict[str, Optional[float]] = {
        "n_structures": int(pe.size),
        "n_atoms": int(na.sum()),
        "energy_mae": float(np.mean(np.abs(de))) if de.size else None,
        "energy_rmse": float(np.sqrt(np.mean(de**2))) if de.size else None,
        "energy_mae_per_atom": float(np.mean(np.abs(de / na))) if de.size else None,
        "energy_rmse_per_atom": float(np.sqrt(np.mean((de / na) ** 2))) if de.size else None,
        "force_mae": None,
        "force_rmse": None,
    }
    if pred_forces is not None and true_forces is not None:
        pf, tf = _concat(pred_forces), _concat(true_forces)
        if pf.shape != tf.shape:
            raise ValueError(f"compute_metrics: predicted forces {pf.shape} vs true forces {tf.shape}")
        if pf.size:
            df = pf - tf
            out["force_mae"] = float(np.mean(np.abs(df)))
            out["force_rmse"] = float(np.sqrt(np.mean(df**2)))
    return out


def write_eval_outputs(
    out_dir: Path,
    metrics: Optional[Dict[str, Any]],
    index: Sequence[int],
    energy: Sequence[float],
    natoms: Sequence[int],
    forces: Any = None,
) -> Dict[str, Path]:
    """Write the eval files atomically; ``metrics=None`` (infer) writes predictions only."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    if metrics is not None:
        atomic_write_json(out_dir / "metrics.json", metrics)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        keys = [k for k in METRIC_KEYS if k in metrics] + sorted(k for k in metrics if k not in METRIC_KEYS)
        w.writerow(keys)
        w.writerow(["" if metrics[k] is None else metrics[k] for k in keys])
        atomic_write_text(out_dir / "metrics.csv", buf.getvalue())
        written["metrics.json"] = out_dir / "metrics.json"
        written["metrics.csv"] = out_dir / "metrics.csv"
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    en = np.asarray(energy, dtype=np.float64).reshape(-1)
    na = np.asarray(natoms, dtype=np.int64).reshape(-1)
    if not (idx.shape == en.shape == na.shape):
        raise ValueError(f"write_eval_outputs: {idx.size} indices, {en.size} energies, {na.size} natoms")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "energy", "energy_per_atom", "natoms"])
    for i, e, n in zip(idx, en, na):
        w.writerow([int(i), repr(float(e)), repr(float(e) / int(n)), int(n)])
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    written["predictions.csv"] = out_dir / "predictions.csv"
    if forces is not None:
        f = _concat(forces)
        if f.shape[0] != int(na.sum()):
            raise ValueError(f"write_eval_outputs: {f.shape[0]} force rows for {int(na.sum())} atoms")
        bio = io.BytesIO()
        np.savez(bio, forces=f, natoms=na, index=idx)
        atomic_write_bytes(out_dir / "predictions_forces.npz", bio.getvalue())
        written["predictions_forces.npz"] = out_dir / "predictions_forces.npz"
    return written

