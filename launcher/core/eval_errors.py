"""The eval errors every backend reports (pure numpy, no torch): energy MAE/RMSE (total and per atom), force
MAE/RMSE over force components, stress MAE/RMSE over the 9 components of the structures with a stress label.

:func:`compute_metrics` defines them on whole arrays; :class:`ForceErrors` gives the same bits from force errors
kept on disk (a streamed evaluation); :class:`EvalArrays` carries what the per-group errors and the parity plot
need of an evaluation, and computes the errors of any subset of its structures.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

METRIC_KEYS = (
    "n_structures", "n_atoms",
    "energy_mae", "energy_rmse", "energy_mae_per_atom", "energy_rmse_per_atom",
    "force_mae", "force_rmse", "stress_mae", "stress_rmse",
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


def _per_structure(forces: Any, natoms: np.ndarray) -> Optional[List[np.ndarray]]:
    if forces is None:
        return None
    if isinstance(forces, np.ndarray) and forces.ndim == 2:
        return np.split(forces.astype(np.float64), np.cumsum(natoms)[:-1])
    return [np.asarray(f, dtype=np.float64).reshape(-1, 3) for f in forces]


def free_forces(pf: List[np.ndarray], tf: List[np.ndarray], rows: Sequence[int]) -> tuple:
    """Concatenated forces of the given structures, atoms with NaN predictions (fixed ones) left out."""
    if not len(rows):
        return np.zeros((0, 3)), np.zeros((0, 3))
    p = np.concatenate([pf[i] for i in rows])
    t = np.concatenate([tf[i] for i in rows])
    keep = ~np.isnan(p).any(axis=1)
    return p[keep], t[keep]


@dataclass
class EvalArrays:
    """One evaluation's numbers as the per-group errors and parity.png take them: per structure the predicted and
    reference energy (eV) and natoms, and the forces either as arrays (predicted, reference: an (N_atoms, 3) array
    or one (n_i, 3) array per structure, eV/Å) or, for a streamed evaluation, as ``force_errors`` (on disk) and
    ``force_points`` (group -> (reference, predicted) components, a bounded sample for the plot)."""

    pred_energy: Any
    true_energy: Any
    natoms: Any
    pred_forces: Any = None
    true_forces: Any = None
    force_errors: Optional[ForceErrors] = None
    force_points: Optional[Dict[str, tuple]] = None

    def __post_init__(self) -> None:
        self.pe = np.asarray(self.pred_energy, dtype=np.float64).reshape(-1)
        self.te = np.asarray(self.true_energy, dtype=np.float64).reshape(-1)
        self.na = np.asarray(self.natoms, dtype=np.int64).reshape(-1)
        self.pf, self.tf = _per_structure(self.pred_forces, self.na), _per_structure(self.true_forces, self.na)

    @property
    def streamed(self) -> bool:
        """Forces known through ``force_errors`` / ``force_points`` rather than arrays."""
        return self.force_errors is not None and self.force_points is not None

    @property
    def has_forces(self) -> bool:
        return (self.pf is not None and self.tf is not None) or self.streamed

    def errors(self, rows: Sequence[int], *, forces: bool = True) -> Dict[str, Optional[float]]:
        """:func:`compute_metrics` of the structures ``rows`` (atoms with NaN predicted forces left out); energies
        only with ``forces`` False."""
        pe, te, na = self.pe[rows], self.te[rows], self.na[rows]
        if not forces:
            return compute_metrics(pe, te, na)
        fp = ft = None
        if self.pf is not None and self.tf is not None:
            fp, ft = free_forces(self.pf, self.tf, rows)
        return compute_metrics(pe, te, na, fp, ft,
                               force_errors=self.force_errors.free(rows) if self.force_errors is not None else None)
