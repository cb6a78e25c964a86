"""The eval files of evaluate / infer built batch by batch (:class:`EvalStream`), in constant memory per
structure, equal bit for bit to what the whole-array functions write. Pure numpy, no torch."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.atomic import _create_temp
from launcher.core.eval_errors import EvalArrays, ForceErrors, compute_metrics
from launcher.core.eval_files import _VOIGT, STRESS_COLUMNS, write_forces_npz, write_metrics_files
from launcher.core.eval_groups import NO_GROUP, resolve_groups, write_group_outputs
from launcher.core.parity import PARITY_MAX_POINTS

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
            arrays = EvalArrays(pe, te, na, force_errors=fs, force_points=points if fs is not None else None)
            write_group_outputs(self.out_dir, metrics, groups, arrays)
            write_metrics_files(self.out_dir, metrics)
            if self._errors is not None:
                self._errors.discard()
        self._commit_csv()
        if self._forces is not None:
            self._forces.fh.flush()
            write_forces_npz(self.out_dir / "predictions_forces.npz", self._forces.tmp, self._force_rows, na, idx)
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
