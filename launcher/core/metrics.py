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

:class:`EvalStream` builds the same files, bit for bit, batch by batch (the MACE backend's evaluate / infer):
predictions and per-atom force errors go to files as they come, and memory keeps per-structure scalars, so no
per-atom array of the whole split is ever held. :func:`fmt_metric` / :func:`metrics_line` are the console's form of these numbers (units,
4 significant digits); the files keep full precision in eV and eV/Å.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.atomic import _create_temp, atomic_write_bytes, atomic_write_json, atomic_write_text

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
    *,
    force_errors: Optional["ForceErrors"] = None,
) -> Dict[str, Optional[float]]:
    """Energy and force errors. Forces: an (N_atoms, 3) array or a list of per-structure arrays, or
    ``force_errors`` (a streamed evaluation's errors, kept on disk: :class:`ForceErrors`).

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
    elif force_errors is not None and force_errors.count:
        out["force_mae"], out["force_rmse"] = force_errors.mae_rmse()
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


#: Components one numpy call sums: a node of numpy's own pairwise summation tree (at least its 128-element block).
_PW_BLOCK = 1 << 20


def _tree_sum(read: Callable[[int, int], np.ndarray], lo: int, n: int, square: bool) -> float:
    """``np.add.reduce`` of ``|x|`` (or ``x**2``) over elements ``lo .. lo + n`` of a float64 sequence that
    ``read(a, b)`` returns in pieces, bit for bit: numpy sums a contiguous array by a pairwise tree (halves
    rounded down to a multiple of 8, down to blocks of 128); this walks the same tree above
    :data:`_PW_BLOCK` and lets numpy sum each node below it, so at most one node is in memory."""
    if n <= _PW_BLOCK:
        x = read(lo, lo + n)
        return float(np.add.reduce(x * x if square else np.abs(x)))
    n2 = n // 2
    n2 -= n2 % 8
    return _tree_sum(read, lo, n2, square) + _tree_sum(read, lo + n2, n - n2, square)


class ForceErrors:
    """The force errors of a streamed evaluation, kept on disk instead of in memory: ``path`` holds dF of every
    atom whose prediction is not NaN (float64, in stream order); per structure its offset there and its number
    of components, and whether it had NaN predictions (an atom FairChem fixed). MAE and RMSE are sums over the
    concatenated components in numpy's own summation order (:func:`_tree_sum`), so they carry exactly the bits
    :func:`compute_metrics` gives on the whole arrays; a NaN prediction makes them NaN, as it does there, except
    through :meth:`free` (the per-group errors, which leave NaN atoms out)."""

    def __init__(self, path: Path, offsets: np.ndarray, counts: np.ndarray, has_nan: np.ndarray) -> None:
        self.path = Path(path)
        self.offsets, self.counts = np.asarray(offsets, np.int64), np.asarray(counts, np.int64)
        self.has_nan = np.asarray(has_nan, bool)
        self.count = int(self.counts.sum())

    def rows(self, rows: Any) -> "ForceErrors":
        return ForceErrors(self.path, self.offsets[rows], self.counts[rows], self.has_nan[rows])

    def free(self, rows: Any) -> "ForceErrors":
        """``rows`` with the NaN atoms left out (the file holds none), as the per-group errors are."""
        return ForceErrors(self.path, self.offsets[rows], self.counts[rows], np.zeros(self.counts[rows].size, bool))

    def _reader(self) -> Callable[[int, int], np.ndarray]:
        data = np.memmap(self.path, dtype="<f8", mode="r")
        off, cnt = self.offsets, self.counts
        if cnt.size and np.array_equal(off[1:], off[:-1] + cnt[:-1]):   # one contiguous stretch of the file
            base = int(off[0])
            return lambda a, b: np.asarray(data[base + a:base + b])
        starts = np.concatenate([[0], np.cumsum(cnt)])

        def read(a: int, b: int) -> np.ndarray:
            i = int(np.searchsorted(starts, a, side="right")) - 1
            j = int(np.searchsorted(starts, b, side="left"))
            parts = [data[off[k] + max(a, starts[k]) - starts[k]:off[k] + min(b, starts[k + 1]) - starts[k]]
                     for k in range(i, j) if cnt[k]]
            return np.concatenate(parts) if parts else np.zeros(0)

        return read

    def mae_rmse(self) -> tuple:
        if self.has_nan.any():
            return float("nan"), float("nan")
        n = self.count
        read = self._reader()
        return (float(np.float64(_tree_sum(read, 0, n, False)) / n),
                float(np.sqrt(np.float64(_tree_sum(read, 0, n, True)) / n)))


def _write_metrics_files(out_dir: Path, metrics: Dict[str, Any]) -> Dict[str, Path]:
    atomic_write_json(out_dir / "metrics.json", metrics)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}   # by_group has its own csv
    keys = [k for k in METRIC_KEYS if k in flat] + sorted(k for k in flat if k not in METRIC_KEYS)
    w.writerow(keys)
    w.writerow(["" if flat[k] is None else flat[k] for k in keys])
    atomic_write_text(out_dir / "metrics.csv", buf.getvalue())
    return {"metrics.json": out_dir / "metrics.json", "metrics.csv": out_dir / "metrics.csv"}


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
        written.update(_write_metrics_files(out_dir, metrics))
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
    *,
    force_errors: Optional[ForceErrors] = None,
) -> Dict[str, Dict[str, Optional[float]]]:
    """:func:`compute_metrics` per group label (sorted); predicted force rows that are NaN are skipped.
    ``force_errors`` stands for the force arrays in a streamed evaluation."""
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
        m = compute_metrics(pe[rows], te[rows], na[rows], fp, ft,
                            force_errors=force_errors.free(rows) if force_errors is not None else None)
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
    return sig(v)


#: Force points a streamed evaluation keeps for parity.png: a seeded uniform sample of the split's force
#: components (reservoir sampling), at most this many; below it, every point is drawn.
PARITY_MAX_POINTS = 200_000


def write_parity_png(
    path: Path,
    pred_energy: Sequence[float],
    true_energy: Sequence[float],
    natoms: Sequence[int],
    pred_forces: Any = None,
    true_forces: Any = None,
    groups: Optional[Sequence[str]] = None,
    max_points: int = PARITY_MAX_POINTS,
    *,
    force_errors: Optional[ForceErrors] = None,
    force_points: Optional[Dict[str, tuple]] = None,
) -> Path:
    """Two panels, energy per atom and force components, one colour per group, MAE/RMSE in the legend.

    matplotlib is imported here (Agg, no display) so the CLI start-up and infer never pay for it;
    force points beyond ``max_points`` per group are subsampled (seeded) to keep the file small. A streamed
    evaluation passes ``force_errors`` (the legend's errors) and ``force_points`` (group -> (reference,
    predicted) components, already a bounded sample) instead of the force arrays.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    pe = np.asarray(pred_energy, dtype=np.float64).reshape(-1)
    te = np.asarray(true_energy, dtype=np.float64).reshape(-1)
    na = np.asarray(natoms, dtype=np.int64).reshape(-1)
    g = np.asarray(["all"] * pe.size if groups is None else [str(x) for x in groups], dtype=object)
    pf, tf = _per_structure(pred_forces, na), _per_structure(true_forces, na)
    streamed = force_errors is not None and force_points is not None
    has_f = (pf is not None and tf is not None) or streamed
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
            if streamed:
                m = compute_metrics(pe[rows], te[rows], na[rows], force_errors=force_errors.free(rows))
                xs, ys = force_points.get(name, (np.zeros(0), np.zeros(0)))
            else:
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
        if streamed:
            m = compute_metrics(pe, te, na, force_errors=force_errors.free(np.arange(pe.size)))
        else:
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
    *,
    force_errors: Optional[ForceErrors] = None,
    force_points: Optional[Dict[str, tuple]] = None,
) -> Dict[str, Path]:
    """``parity.png`` always; with ``groups``, ``errors_by_group.csv`` and ``metrics["by_group"]``.

    Call before :func:`write_eval_outputs` so that metrics.json carries the per-group block. A streamed
    evaluation passes ``force_errors`` / ``force_points`` (see :func:`write_parity_png`) instead of the forces.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    if groups is not None:
        by_group = group_metrics(groups, pred_energy, true_energy, natoms, pred_forces, true_forces,
                                 force_errors=force_errors)
        metrics["by_group"] = by_group
        written["errors_by_group.csv"] = write_group_csv(out_dir / "errors_by_group.csv", by_group)
    written["parity.png"] = write_parity_png(out_dir / "parity.png", pred_energy, true_energy, natoms,
                                             pred_forces, true_forces, groups,
                                             force_errors=force_errors, force_points=force_points)
    return written


# ---------------------------------------------------------------- streamed evaluation
class _StreamFile:
    """A file written piece by piece into a temp file beside it (``.NAME.RANDOM.tmp``, removed by the next
    job if this one is killed); :meth:`commit` fsyncs and renames it into place, :meth:`discard` drops it."""

    def __init__(self, path: Path, binary: bool = False) -> None:
        self.path = Path(path)
        self.tmp = _create_temp(self.path)
        self.fh: Any = open(self.tmp, "wb") if binary else open(self.tmp, "w", encoding="utf-8", newline="")

    def commit(self) -> Path:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


class _Reservoir:
    """A seeded uniform sample of at most ``cap`` (group code, reference, predicted) points of a stream."""

    def __init__(self, cap: int, seed: int = 0) -> None:
        self.cap, self.seen = int(cap), 0
        self.rng = np.random.default_rng(seed)
        self.code = np.zeros(0, np.int32)
        self.ref = np.zeros(0, np.float64)
        self.pred = np.zeros(0, np.float64)

    def add(self, code: int, ref: np.ndarray, pred: np.ndarray) -> None:
        ref, pred = ref.reshape(-1), pred.reshape(-1)
        room = max(0, min(ref.size, self.cap - self.code.size))
        if room:
            self.code = np.concatenate([self.code, np.full(room, code, np.int32)])
            self.ref = np.concatenate([self.ref, ref[:room]])
            self.pred = np.concatenate([self.pred, pred[:room]])
        rest = ref.size - room
        if rest > 0:   # Algorithm R: point number t replaces a random slot with probability cap / (t + 1)
            t = self.seen + room + np.arange(rest)
            slot = self.rng.integers(0, t + 1)
            keep = np.flatnonzero(slot < self.cap)
            if keep.size:
                slots = slot[keep]
                # a slot drawn twice in this block holds the later point, as one-by-one replacement leaves it
                last = keep[::-1][np.unique(slots[::-1], return_index=True)[1]]
                self.code[slot[last]] = code
                self.ref[slot[last]] = ref[room:][last]
                self.pred[slot[last]] = pred[room:][last]
        self.seen += ref.size


class EvalStream:
    """The eval files of evaluate / infer, built batch by batch in constant memory per structure.

    ``predictions.csv`` rows and the predicted forces go to temp files as they come (forces as raw float64,
    turned into ``predictions_forces.npz`` at the end, the layout :func:`write_eval_outputs` writes), and so do
    the force errors (:class:`ForceErrors`, summed from disk at the end); the rest of the metrics come from
    per-structure scalars (energies, natoms, group label), and parity.png draws a seeded sample of at most
    ``parity_max_points`` force components (every one below it). So memory holds those scalars and no
    per-atom array of the split, and every number equals, bit for bit, what :func:`compute_metrics`,
    :func:`write_group_outputs` and :func:`write_eval_outputs` give on the whole arrays.
    """

    def __init__(self, out_dir: Path, *, with_metrics: bool, with_forces: bool, group_by: Optional[str] = None,
                 parity_max_points: int = PARITY_MAX_POINTS, seed: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.with_metrics, self.with_forces = with_metrics, with_forces
        self.group_by = group_by if with_metrics else None
        self._csv = _StreamFile(self.out_dir / "predictions.csv")
        self._rows = csv.writer(self._csv.fh, lineterminator="\n")
        self._rows.writerow(["index", "energy", "energy_per_atom", "natoms"])
        self._forces = _StreamFile(self.out_dir / "predictions_forces.npz", binary=True) if with_forces else None
        self._force_rows = 0
        self._errors = _StreamFile(self.out_dir / "force_errors", binary=True) \
            if with_metrics and with_forces else None
        self._error_count = 0
        self._cols: Dict[str, List[np.ndarray]] = {k: [] for k in ("index", "natoms", "pred", "true", "group",
                                                                   "f_off", "f_n", "f_nan", "s_pred", "s_true")}
        self._codes: Dict[Optional[str], int] = {}
        self.true_forces = True      # every structure so far has reference forces
        self.sample = _Reservoir(parity_max_points, seed)

    def __len__(self) -> int:
        return sum(a.size for a in self._cols["index"])

    def add(self, index: Sequence[int], natoms: Sequence[int], pred_energy: Sequence[float],
            pred_forces: Optional[Sequence[np.ndarray]] = None, true_energy: Optional[Sequence[Optional[float]]] = None,
            true_forces: Optional[Sequence[Optional[np.ndarray]]] = None,
            groups: Optional[Sequence[Optional[str]]] = None, pred_stress: Any = None,
            true_stress: Optional[Sequence[Optional[np.ndarray]]] = None) -> None:
        """One batch: per structure its index, natoms, predicted energy (eV) and forces ((n, 3) eV/Å), and with
        metrics the reference energy / forces (None where absent) and the ``group_by`` label (None: absent);
        ``pred_stress`` ((B, 3, 3) eV/Å^3, None: not predicted) and ``true_stress`` (3x3 or None each) are nine
        numbers per structure, kept like the energies."""
        if len(self._cols["index"]) >= 256:     # one array per column, not one per batch (a million batches)
            self._cols = {k: [np.concatenate(v)] if v else v for k, v in self._cols.items()}
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        na = np.asarray(natoms, dtype=np.int64).reshape(-1)
        pe = np.asarray(pred_energy, dtype=np.float64).reshape(-1)
        if not (idx.shape == na.shape == pe.shape):
            raise ValueError(f"EvalStream.add: {idx.size} indices, {pe.size} energies, {na.size} natoms")
        for i, e, n in zip(idx, pe, na):
            self._rows.writerow([int(i), repr(float(e)), repr(float(e) / int(n)), int(n)])
        self._cols["index"].append(idx)
        self._cols["natoms"].append(na)
        self._cols["pred"].append(pe)
        self._add_stress(idx.size, pred_stress, true_stress)
        if self._forces is not None:
            if pred_forces is None or len(pred_forces) != idx.size:
                raise ValueError("EvalStream.add: forces of every structure are needed (with_forces)")
            for f, n in zip(pred_forces, na):
                f = np.ascontiguousarray(f, dtype="<f8").reshape(-1, 3)
                if f.shape[0] != int(n):
                    raise ValueError(f"EvalStream.add: {f.shape[0]} force rows for {int(n)} atoms")
                self._forces.fh.write(f.tobytes())
                self._force_rows += f.shape[0]
        if not self.with_metrics:
            return
        te = np.asarray([np.nan if e is None else float(e) for e in true_energy], dtype=np.float64) \
            if true_energy is not None else np.full(idx.size, np.nan)
        self._cols["true"].append(te)
        labels = list(groups) if groups is not None else [None] * idx.size
        self._cols["group"].append(np.asarray([self._codes.setdefault(lab, len(self._codes)) for lab in labels],
                                              dtype=np.int32))
        f_off = np.full(idx.size, self._error_count, dtype=np.int64)
        f_n = np.zeros(idx.size, dtype=np.int64)
        f_nan = np.zeros(idx.size, dtype=bool)
        if self._errors is not None and self.true_forces:
            if true_forces is None or any(f is None for f in true_forces):
                self.true_forces = False
            else:
                for k, (p, t) in enumerate(zip(pred_forces, true_forces)):
                    p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
                    t = np.asarray(t, dtype=np.float64).reshape(-1, 3)
                    if p.shape != t.shape:
                        raise ValueError(f"EvalStream.add: predicted forces {p.shape} vs true forces {t.shape}")
                    free = ~np.isnan(p).any(axis=1)
                    d = np.ascontiguousarray(p[free] - t[free], dtype="<f8")
                    self._errors.fh.write(d.tobytes())
                    f_off[k], f_n[k], f_nan[k] = self._error_count, d.size, not free.all()
                    self._error_count += d.size
                    self.sample.add(int(self._cols["group"][-1][k]), t[free], p[free])
        self._cols["f_off"].append(f_off)
        self._cols["f_n"].append(f_n)
        self._cols["f_nan"].append(f_nan)

    def _col(self, name: str, dtype: Any) -> np.ndarray:
        parts = self._cols[name]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    def finish(self, *, extra: Optional[Dict[str, Any]] = None,
               note: Optional[Callable[[str], None]] = None) -> Optional[Dict[str, Any]]:
        """Write every file (metrics, groups and parity with metrics; then the predictions); the metrics or None.
        ``extra`` joins metrics.json (split, head, model ...); ``note`` gets the line of a ``group_by`` key that
        no structure carries."""
        idx, na, pe = self._col("index", np.int64), self._col("natoms", np.int64), self._col("pred", np.float64)
        metrics: Optional[Dict[str, Any]] = None
        if self.with_metrics:
            te = self._col("true", np.float64)
            fs = None
            if self._errors is not None and self.true_forces:
                self._errors.fh.flush()
                fs = ForceErrors(self._errors.tmp, self._col("f_off", np.int64), self._col("f_n", np.int64),
                                 self._col("f_nan", bool))
            metrics = compute_metrics(pe, te, na, force_errors=fs)
            metrics.update(self._stress_errors())
            metrics.update(extra or {})
            names = {code: lab for lab, code in self._codes.items()}
            codes = self._col("group", np.int32)
            groups = resolve_groups([names[int(c)] for c in codes], self.group_by, note) if self.group_by else None
            points = None
            if fs is not None:
                label = (lambda c: "all") if groups is None else (lambda c: NO_GROUP if names[c] is None else names[c])
                points = {}
                for c in np.unique(self.sample.code):
                    pick = self.sample.code == c
                    points[label(int(c))] = (self.sample.ref[pick], self.sample.pred[pick])
            write_group_outputs(self.out_dir, metrics, groups, pe, te, na, force_errors=fs,
                                force_points=points if fs is not None else None)
            _write_metrics_files(self.out_dir, metrics)
            if self._errors is not None:
                self._errors.discard()
        self._commit_csv()
        if self._forces is not None:
            self._forces.fh.flush()
            _write_forces_npz(self.out_dir / "predictions_forces.npz", self._forces.tmp, self._force_rows, na, idx)
            self._forces.discard()
        return metrics

    def _add_stress(self, b: int, pred: Any, true: Optional[Sequence[Optional[np.ndarray]]]) -> None:
        """Nine predicted and nine reference numbers per structure (NaN: none), kept from the first batch that
        has either on (the structures before it padded with NaN), so data without stress keeps nothing."""
        true = list(true) if true is not None else [None] * b
        if pred is None and all(t is None for t in true) and not self._cols["s_pred"]:
            return
        if not self._cols["s_pred"] and len(self) > b:
            for k in ("s_pred", "s_true"):
                self._cols[k].append(np.full((len(self) - b, 9), np.nan))
        self._cols["s_pred"].append(np.full((b, 9), np.nan) if pred is None
                                    else np.asarray(pred, dtype=np.float64).reshape(b, 9))
        self._cols["s_true"].append(np.asarray([np.full(9, np.nan) if t is None else np.asarray(t, np.float64).reshape(9)
                                                for t in true]).reshape(b, 9))

    def _stress(self, name: str) -> np.ndarray:
        parts = self._cols[name]
        return np.concatenate(parts) if parts else np.zeros((0, 9))

    def _stress_errors(self) -> Dict[str, Optional[float]]:
        """:func:`stress_errors` of the structures with a stress label (nothing when none has one)."""
        st = self._stress("s_true")
        rows = np.flatnonzero(~np.isnan(st).all(axis=1))
        if not rows.size:
            return {}
        ds = self._stress("s_pred")[rows].reshape(-1, 3, 3) - st[rows].reshape(-1, 3, 3)
        return {"stress_mae": float(np.mean(np.abs(ds))), "stress_rmse": float(np.sqrt(np.mean(ds**2)))}

    def _commit_csv(self) -> None:
        """predictions.csv into place; with predicted stress, its Voigt components (eV/Å^3, empty where a
        structure's batch predicted none) join each row, one line at a time."""
        sp = self._stress("s_pred")
        if not (~np.isnan(sp).all(axis=1)).any():
            self._csv.commit()
            return
        self._csv.fh.close()
        out = _StreamFile(self._csv.path)
        try:
            with open(self._csv.tmp, encoding="utf-8", newline="") as fh:
                w = csv.writer(out.fh, lineterminator="\n")
                for k, row in enumerate(csv.reader(fh)):
                    if k == 0:
                        w.writerow([*row, *STRESS_COLUMNS])
                        continue
                    v = sp[k - 1].reshape(3, 3)
                    w.writerow([*row, *(("" if math.isnan(v[a, b]) else repr(float(v[a, b]))) for a, b in _VOIGT)])
            out.commit()
        except BaseException:
            out.discard()
            raise
        finally:
            self._csv.discard()

    def discard(self) -> None:
        """Drop the temp files of an evaluation that failed."""
        self._csv.discard()
        for f in (self._forces, self._errors):
            if f is not None:
                f.discard()


def _write_forces_npz(path: Path, raw: Path, rows: int, natoms: np.ndarray, index: np.ndarray) -> None:
    """``predictions_forces.npz`` as ``np.savez(forces=, natoms=, index=)`` writes it, its forces copied from the
    raw float64 file ``raw`` in chunks (never read whole)."""
    import shutil
    import zipfile

    from launcher.core.atomic import atomic_write_via

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("forces.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f8")),
                                                          "fortran_order": False, "shape": (int(rows), 3)})
                with open(raw, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 24)
            for name, arr in (("natoms", natoms), ("index", index)):
                with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(arr, dtype=np.int64))

    atomic_write_via(Path(path), write)


# ---------------------------------------------------------------- the console's form of the numbers
#: Console units, one per quantity (README "Units"): energy per atom in meV/atom, total energy in eV, forces
#: in eV/Å. Files (metrics.json, metrics.jsonl, the csvs) keep eV, eV/atom and eV/Å at full precision.
SIG_DIGITS = 4
_SHORT = {"energy_mae": "E_mae", "energy_rmse": "E_rmse", "energy_mae_per_atom": "E_mae/atom",
          "energy_rmse_per_atom": "E_rmse/atom", "force_mae": "F_mae", "force_rmse": "F_rmse",
          "forces_mae": "F_mae", "forces_rmse": "F_rmse",
          "stress_mae": "S_mae", "stress_rmse": "S_rmse"}   # FairChem's names of the same errors


def sig(x: Any, digits: int = SIG_DIGITS) -> str:
    """``x`` to ``digits`` significant digits (trailing zeros kept: 0.1200), ``n/a`` for None."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    text = f"{v:#.{digits}g}"
    return text[:-1] if text.endswith(".") else text


def metric_unit(key: str) -> tuple:
    """(unit, factor from the stored value) of a metric name, ``("", 1.0)`` when it has none (loss, lr,
    cosines, fractions). Covers our names and FairChem's (``forces_mae``, ``energy_per_atom_mae`` ...)."""
    k = key.lower().rsplit("/", 1)[-1]
    words = k.split("_")
    kind = "magnitude_error" if "magnitude_error" in k else next((w for w in ("rmse", "mae", "mse") if w in words), None)
    if kind is None:
        return "", 1.0
    if k.startswith("energy") and "per_atom" in k:
        unit, factor = "meV/atom", 1e3
    elif k.startswith("energy"):
        unit, factor = "eV", 1.0
    elif k.startswith("force"):
        unit, factor = "eV/Å", 1.0
    elif k.startswith("stress"):
        unit, factor = "eV/Å³", 1.0
    else:
        return "", 1.0
    if kind == "mse":
        return f"({unit})²", factor * factor
    return unit, factor


def fmt_metric(key: str, value: Any) -> str:
    """``12.35 meV/atom`` for ``energy_rmse_per_atom=0.012346``; numbers without a unit to 4 digits."""
    unit, factor = metric_unit(key)
    if value is None or not unit or isinstance(value, (bool, int, np.integer)):
        return sig(value)
    return f"{sig(float(value) * factor)} {unit}"


def metrics_line(metrics: Dict[str, Any], keys: Optional[Sequence[str]] = None, sep: str = ", ") -> str:
    """The numbers of ``metrics`` as the console shows them: ``8 structures (160 atoms): E_mae=0.1234 eV,
    E_mae/atom=1.234 meV/atom, ...`` (our names shortened, others as they are); with ``keys`` None every
    numeric entry (the eval metrics' counts first), else those keys, ``n/a`` where absent."""
    head = ""
    if keys is None and "n_structures" in metrics:
        n_at = f" ({metrics['n_atoms']} atoms)" if metrics.get("n_atoms") is not None else ""
        head = f"{metrics['n_structures']} structures{n_at}: "
        keys = [k for k in METRIC_KEYS[2:] if metrics.get(k) is not None]
    parts: List[str] = []
    for k in keys if keys is not None else sorted(metrics, key=_order):
        v = metrics.get(k)
        if isinstance(v, (dict, list, str)) or (v is None and keys is None):
            continue
        parts.append(f"{_SHORT.get(k, k)}={f'{v:.4g}' if k == 'lr' and v is not None else fmt_metric(k, v)}")
    return head + sep.join(parts)


def _order(key: str) -> int:
    """loss, energies, forces, the rest (a stable sort keeps each group's own order)."""
    k = key.lower()
    return 0 if k == "loss" else 1 if k.startswith("energy") else 2 if k.startswith("force") else 3
