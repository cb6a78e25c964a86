"""Evaluation metrics and output files shared by every backend (pure numpy, no torch).

Both the core MACE trainer and the FairChem runner call these two functions, so that
``run_dir/eval/`` holds the same files with the same columns whichever backend made them:

- ``metrics.json`` / ``metrics.csv``: energy MAE/RMSE (total and per atom), force MAE/RMSE, counts; stress
  MAE/RMSE (``stress_mae``/``stress_rmse``, eV/Å^3, over the 9 components of the structures with a stress label)
  when the backend predicted stress
- ``predictions.csv``: index, energy, energy_per_atom, natoms; with predicted stress also
  ``stress_xx, stress_yy, stress_zz, stress_yz, stress_xz, stress_xy`` (Voigt, ASE's order and sign, eV/Å^3)
- ``predictions_forces.npz``: ``forces`` (all atoms, concatenated) and ``natoms`` to split them
- ``errors_by_group.csv`` (evaluate, ``eval.group_by`` set): the errors per label of that key; the same
  numbers are ``by_group`` in metrics.json
- ``parity.png`` (evaluate): predicted vs reference energy per atom and force components
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

METRIC_KEYS = (
    "n_structures", "n_atoms",
    "energy_mae", "energy_rmse", "energy_mae_per_atom", "energy_rmse_per_atom",
    "force_mae", "force_rmse", "stress_mae", "stress_rmse",
)
STRESS_COLUMNS = ("stress_xx", "stress_yy", "stress_zz", "stress_yz", "stress_xz", "stress_xy")
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


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
    pred_stress: Any = None,
    true_stress: Any = None,
) -> Dict[str, Optional[float]]:
    """Energy and force errors. Forces: an (N_atoms, 3) array or a list of per-structure arrays.

    Force errors are over force components (as mace's tables); ``None`` where forces are absent. Given
    ``pred_stress`` ((n, 3, 3)) and ``true_stress`` (one 3x3 or None per structure), ``stress_mae``/``stress_rmse``
    over the 9 components of the structures that have a label (None when none has).
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
    if pred_stress is not None and true_stress is not None:
        out.update(stress_errors(pred_stress, true_stress))
    return out


def stress_errors(pred_stress: Any, true_stress: Sequence[Any]) -> Dict[str, Optional[float]]:
    """``stress_mae``/``stress_rmse`` (eV/Å^3) over the 9 components of every structure with a stress label."""
    ps = np.asarray(pred_stress, dtype=np.float64).reshape(-1, 3, 3)
    if ps.shape[0] != len(true_stress):
        raise ValueError(f"compute_metrics: {ps.shape[0]} predicted stresses for {len(true_stress)} structures")
    rows = [i for i, t in enumerate(true_stress) if t is not None]
    if not rows:
        return {"stress_mae": None, "stress_rmse": None}
    ts = np.stack([np.asarray(true_stress[i], dtype=np.float64).reshape(3, 3) for i in rows])
    ds = ps[rows] - ts
    return {"stress_mae": float(np.mean(np.abs(ds))), "stress_rmse": float(np.sqrt(np.mean(ds**2)))}


def write_eval_outputs(
    out_dir: Path,
    metrics: Optional[Dict[str, Any]],
    index: Sequence[int],
    energy: Sequence[float],
    natoms: Sequence[int],
    forces: Any = None,
    stress: Any = None,
) -> Dict[str, Path]:
    """Write the eval files atomically; ``metrics=None`` (infer) writes predictions only; ``stress`` ((n, 3, 3),
    eV/Å^3) adds its Voigt components to predictions.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    if metrics is not None:
        atomic_write_json(out_dir / "metrics.json", metrics)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}   # by_group has its own csv
        keys = [k for k in METRIC_KEYS if k in flat] + sorted(k for k in flat if k not in METRIC_KEYS)
        w.writerow(keys)
        w.writerow(["" if flat[k] is None else flat[k] for k in keys])
        atomic_write_text(out_dir / "metrics.csv", buf.getvalue())
        written["metrics.json"] = out_dir / "metrics.json"
        written["metrics.csv"] = out_dir / "metrics.csv"
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    en = np.asarray(energy, dtype=np.float64).reshape(-1)
    na = np.asarray(natoms, dtype=np.int64).reshape(-1)
    if not (idx.shape == en.shape == na.shape):
        raise ValueError(f"write_eval_outputs: {idx.size} indices, {en.size} energies, {na.size} natoms")
    st = None
    if stress is not None:
        st = np.asarray(stress, dtype=np.float64).reshape(-1, 3, 3)
        if st.shape[0] != idx.size:
            raise ValueError(f"write_eval_outputs: {st.shape[0]} stresses for {idx.size} structures")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "energy", "energy_per_atom", "natoms", *(STRESS_COLUMNS if st is not None else ())])
    for k, (i, e, n) in enumerate(zip(idx, en, na)):
        extra = [repr(float(st[k][a, b])) for a, b in _VOIGT] if st is not None else []
        w.writerow([int(i), repr(float(e)), repr(float(e) / int(n)), int(n), *extra])
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



# ---------------------------------------------------------------- per-group metrics and parity plot
NO_GROUP = "(none)"
GROUP_COLUMNS = (
    "group", "n_structures", "n_atoms",
    "energy_mae_per_atom", "energy_rmse_per_atom", "force_mae", "force_rmse",
)


def _scalar_label(value: Any) -> Optional[str]:
    """A group label from a stored value: scalars only (an array-valued field is not a group)."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(-1)[0]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple, dict, set)):
        return None
    return str(value)


def group_label(info: Optional[Dict[str, Any]], key: str, fields: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The structure's label under ``key``: its ``info`` entry, else a scalar record field (FairChem LMDBs)."""
    if info and key in info:
        label = _scalar_label(info[key])
        if label is not None:
            return label
    if fields and key in fields:
        return _scalar_label(fields[key])
    return None


def resolve_groups(
    labels: Sequence[Optional[str]], key: Optional[str], note: Optional[Callable[[str], None]] = None,
) -> Optional[List[str]]:
    """Labels with missing ones as ``(none)``; ``None`` when grouping is off (``key`` null).

    A key that no structure carries is not an error (the data may simply lack it): one line through
    ``note`` (default: stderr) and every structure in ``(none)``.
    """
    if not key:
        return None
    out = [NO_GROUP if lab is None else str(lab) for lab in labels]
    if out and all(lab is None for lab in labels):
        (note or _stderr)(f"warning: eval.group_by={key}: no evaluated structure has this key; "
                          f"all {len(out)} are in group '{NO_GROUP}'")
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _per_structure(forces: Any, natoms: np.ndarray) -> Optional[List[np.ndarray]]:
    if forces is None:
        return None
    if isinstance(forces, np.ndarray) and forces.ndim == 2:
        return np.split(forces.astype(np.float64), np.cumsum(natoms)[:-1])
    return [np.asarray(f, dtype=np.float64).reshape(-1, 3) for f in forces]


def _free_forces(pf: List[np.ndarray], tf: List[np.ndarray], rows: Sequence[int]) -> tuple:
    """Concatenated forces of the given structures, atoms with NaN predictions (fixed ones) left out."""
    if not len(rows):
        return np.zeros((0, 3)), np.zeros((0, 3))
    p = np.concatenate([pf[i] for i in rows])
    t = np.concatenate([tf[i] for i in rows])
    keep = ~np.isnan(p).any(axis=1)
    return p[keep], t[keep]


def group_metrics(
    groups: Sequence[str],
    pred_energy: Sequence[float],
    true_energy: Sequence[float],
    natoms: Sequence[int],
    pred_forces: Any = None,
    true_forces: Any = None,
) -> Dict[str, Dict[str, Optional[float]]]:
    """:func:`compute_metrics` per group label (sorted); predicted force rows that are NaN are skipped."""
    pe = np.asarray(pred_energy, dtype=np.float64).reshape(-1)
    te = np.asarray(true_energy, dtype=np.float64).reshape(-1)
    na = np.asarray(natoms, dtype=np.int64).reshape(-1)
    g = np.asarray([str(x) for x in groups], dtype=object)
    if g.shape != pe.shape:
        raise ValueError(f"group_metrics: {g.size} group labels for {pe.size} structures")
    pf, tf = _per_structure(pred_forces, na), _per_structure(true_forces, na)
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for name in sorted(set(g.tolist())):
        rows = np.flatnonzero(g == name)
        fp = ft = None
        if pf is not None and tf is not None:
            fp, ft = _free_forces(pf, tf, rows)
        m = compute_metrics(pe[rows], te[rows], na[rows], fp, ft)
        out[name] = {k: m[k] for k in GROUP_COLUMNS[1:]}
    return out


def write_group_csv(path: Path, by_group: Dict[str, Dict[str, Optional[float]]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(GROUP_COLUMNS)
    for name, m in by_group.items():
        w.writerow([name] + ["" if m[k] is None else (repr(m[k]) if isinstance(m[k], float) else m[k])
                             for k in GROUP_COLUMNS[1:]])
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def write_parity_png(
    path: Path,
    pred_energy: Sequence[float],
    true_energy: Sequence[float],
    natoms: Sequence[int],
    pred_forces: Any = None,
    true_forces: Any = None,
    groups: Optional[Sequence[str]] = None,
    max_points: int = 200_000,
) -> Path:
    """Two panels, energy per atom and force components, one colour per group, MAE/RMSE in the legend.

    matplotlib is imported here (Agg, no display) so the CLI start-up and infer never pay for it;
    force points beyond ``max_points`` per group are subsampled (seeded) to keep the file small.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    pe = np.asarray(pred_energy, dtype=np.float64).reshape(-1)
    te = np.asarray(true_energy, dtype=np.float64).reshape(-1)
    na = np.asarray(natoms, dtype=np.int64).reshape(-1)
    g = np.asarray(["all"] * pe.size if groups is None else [str(x) for x in groups], dtype=object)
    pf, tf = _per_structure(pred_forces, na), _per_structure(true_forces, na)
    has_f = pf is not None and tf is not None
    fig = Figure(figsize=(11 if has_f else 5.5, 5), dpi=110)
    axes = fig.subplots(1, 2 if has_f else 1, squeeze=False)[0]
    rng = np.random.default_rng(0)
    names = sorted(set(g.tolist()))
    for name in names:
        rows = np.flatnonzero(g == name)
        m = compute_metrics(pe[rows], te[rows], na[rows])
        axes[0].scatter(te[rows] / na[rows], pe[rows] / na[rows], s=8, alpha=0.7,
                        label=f"{name} (n={rows.size}) MAE {_fmt(m['energy_mae_per_atom'])} "
                              f"RMSE {_fmt(m['energy_rmse_per_atom'])}")
        if has_f:
            fp, ft = _free_forces(pf, tf, rows)
            m = compute_metrics(pe[rows], te[rows], na[rows], fp, ft)
            if fp.size > max_points:
                pick = rng.choice(fp.size, size=max_points, replace=False)
                xs, ys = ft.reshape(-1)[pick], fp.reshape(-1)[pick]
            else:
                xs, ys = ft.reshape(-1), fp.reshape(-1)
            axes[1].scatter(xs, ys, s=4, alpha=0.5,
                            label=f"{name} MAE {_fmt(m['force_mae'])} RMSE {_fmt(m['force_rmse'])}")
    if len(names) > 1:   # the overall errors as a legend line of their own
        m = compute_metrics(pe, te, na, *(_free_forces(pf, tf, range(pe.size)) if has_f else ()))
        axes[0].plot([], [], " ", label=f"all (n={pe.size}) MAE {_fmt(m['energy_mae_per_atom'])} "
                                        f"RMSE {_fmt(m['energy_rmse_per_atom'])}")
        if has_f:
            axes[1].plot([], [], " ", label=f"all MAE {_fmt(m['force_mae'])} RMSE {_fmt(m['force_rmse'])}")
    panels = [(axes[0], "energy per atom", "eV/atom")]
    if has_f:
        panels.append((axes[1], "force components", "eV/Å"))
    for ax, title, unit in panels:
        lo, hi = ax.get_xlim()
        lo2, hi2 = ax.get_ylim()
        lo, hi = min(lo, lo2), max(hi, hi2)
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"reference ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_title(f"{title} (MAE / RMSE in {unit})")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    bio = io.BytesIO()
    fig.savefig(bio, format="png")
    atomic_write_bytes(Path(path), bio.getvalue())
    return Path(path)


def write_group_outputs(
    out_dir: Path,
    metrics: Dict[str, Any],
    groups: Optional[Sequence[str]],
    pred_energy: Sequence[float],
    true_energy: Sequence[float],
    natoms: Sequence[int],
    pred_forces: Any = None,
    true_forces: Any = None,
) -> Dict[str, Path]:
    """``parity.png`` always; with ``groups``, ``errors_by_group.csv`` and ``metrics["by_group"]``.

    Call before :func:`write_eval_outputs` so that metrics.json carries the per-group block.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    if groups is not None:
        by_group = group_metrics(groups, pred_energy, true_energy, natoms, pred_forces, true_forces)
        metrics["by_group"] = by_group
        written["errors_by_group.csv"] = write_group_csv(out_dir / "errors_by_group.csv", by_group)
    written["parity.png"] = write_parity_png(out_dir / "parity.png", pred_energy, true_energy, natoms,
                                             pred_forces, true_forces, groups)
    return written
