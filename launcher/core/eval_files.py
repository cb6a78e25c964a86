"""The eval files every backend writes into ``run_dir/eval/`` (atomically; pure numpy, no torch).

- ``metrics.json`` / ``metrics.csv``: the errors of :mod:`launcher.core.eval_errors` and counts (``by_group``,
  when there is one, stays in metrics.json: it has its own csv)
- ``predictions.csv``: index, energy, energy_per_atom, natoms; with predicted stress also
  ``stress_xx, stress_yy, stress_zz, stress_yz, stress_xz, stress_xy`` (Voigt, ASE's order and sign, eV/Å^3)
- ``predictions_forces.npz``: ``forces`` (all atoms, concatenated), ``natoms`` to split them, ``index``
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from launcher.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from launcher.core.eval_errors import METRIC_KEYS, _concat

STRESS_COLUMNS = ("stress_xx", "stress_yy", "stress_zz", "stress_yz", "stress_xz", "stress_xy")
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def write_metrics_files(out_dir: Path, metrics: Dict[str, Any]) -> Dict[str, Path]:
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
        written.update(write_metrics_files(out_dir, metrics))
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


def write_forces_npz(path: Path, raw: Path, rows: int, natoms: np.ndarray, index: np.ndarray) -> None:
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
