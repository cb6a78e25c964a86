"""Errors per group label (``eval.group_by``): labels from each structure's info or a scalar LMDB field, the
per-group errors (``metrics.json`` ``by_group``, ``errors_by_group.csv``) and, with them, ``parity.png``.
Pure numpy, no torch (matplotlib only when the plot is drawn)."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.atomic import atomic_write_text
from launcher.core.eval_errors import EvalArrays

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


def group_metrics(groups: Sequence[str], data: EvalArrays) -> Dict[str, Dict[str, Optional[float]]]:
    """:func:`launcher.core.eval_errors.compute_metrics` per group label (sorted); predicted force rows that are
    NaN are skipped. A streamed evaluation's ``data`` has ``force_errors`` in place of the force arrays."""
    g = np.asarray([str(x) for x in groups], dtype=object)
    if g.shape != data.pe.shape:
        raise ValueError(f"group_metrics: {g.size} group labels for {data.pe.size} structures")
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for name in sorted(set(g.tolist())):
        m = data.errors(np.flatnonzero(g == name))
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


def write_group_outputs(out_dir: Path, metrics: Dict[str, Any], groups: Optional[Sequence[str]],
                        data: EvalArrays) -> Dict[str, Path]:
    """``parity.png`` always; with ``groups``, ``errors_by_group.csv`` and ``metrics["by_group"]``.

    Call before :func:`launcher.core.eval_files.write_eval_outputs` so that metrics.json carries the per-group
    block. A streamed evaluation's ``data`` has ``force_errors`` / ``force_points`` instead of the forces.
    """
    from launcher.core.parity import write_parity_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    if groups is not None:
        by_group = group_metrics(groups, data)
        metrics["by_group"] = by_group
        written["errors_by_group.csv"] = write_group_csv(out_dir / "errors_by_group.csv", by_group)
    written["parity.png"] = write_parity_png(out_dir / "parity.png", data, groups)
    return written
