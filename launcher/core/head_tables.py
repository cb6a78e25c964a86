"""Per-head tables of an evaluate with ``eval.heads`` (pure Python, no torch).

- ``eval/metrics_by_head.csv``: one row per head, the eval metrics (:data:`launcher.core.metrics.METRIC_KEYS`,
  eV, eV/atom, eV/Å, eV/Å^3, full precision) of that head on its own data, then the data's path
- ``eval/compare_base_by_head.csv``: per head, each error of the base model (``<metric>_before``), of the
  fine-tuned model (``<metric>_after``) and ``<metric>_delta`` (after - before); ``n/a`` where the base model
  lacks the head. The console shows the same table in its own units (:func:`compare_lines`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional

from launcher.core.atomic import atomic_write_text
from launcher.core.console_numbers import SHORT_NAMES, fmt_metric
from launcher.core.eval_errors import METRIC_KEYS

BY_HEAD_COLUMNS = ("head", *METRIC_KEYS, "dataset")
ERRORS = METRIC_KEYS[2:]
NA = "n/a"


def _cell(v: Any) -> Any:
    return "" if v is None else repr(v) if isinstance(v, float) else v


def _write_csv(path: Path, header: List[str], rows: List[List[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[_cell(v) for v in row] for row in rows])
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


def write_metrics_by_head(path: Path, by_head: Dict[str, Dict[str, Any]]) -> Path:
    """``metrics_by_head.csv``: head -> its metrics (as metrics.json holds them), one row each, in order."""
    return _write_csv(path, list(BY_HEAD_COLUMNS),
                      [[head, *(m.get(k) for k in BY_HEAD_COLUMNS[1:])] for head, m in by_head.items()])


def compare_rows(after: Dict[str, Dict[str, Any]], before: Dict[str, Optional[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """One row per head of ``after``: ``head``, ``n_structures`` and per error its before / after / delta
    (``n/a`` before and delta where ``before`` has no metrics for the head; None where a model has no value)."""
    keys = [k for k in ERRORS if any(m.get(k) is not None for m in after.values())]
    rows = []
    for head, a in after.items():
        b = before.get(head)
        row: Dict[str, Any] = {"head": head, "n_structures": a.get("n_structures")}
        for k in keys:
            old, new = (NA if b is None else b.get(k)), a.get(k)
            row[f"{k}_before"], row[f"{k}_after"] = old, new
            row[f"{k}_delta"] = NA if b is None else (None if old is None or new is None else new - old)
        rows.append(row)
    return rows


def write_compare_csv(path: Path, rows: List[Dict[str, Any]]) -> Path:
    """``compare_base_by_head.csv`` of :func:`compare_rows`."""
    header = list(rows[0]) if rows else ["head", "n_structures"]
    return _write_csv(path, header, [[r.get(k) for k in header] for r in rows])


#: The errors the console table shows, where the rows have them.
CONSOLE_KEYS = ("energy_rmse_per_atom", "force_rmse", "stress_rmse")


def compare_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """The comparison as console lines: a header, then per head ``before -> after (delta)`` of each error in
    :data:`CONSOLE_KEYS` the rows have, in console units (meV/atom, eV/Å); the csv has every error."""
    keys = [k for k in CONSOLE_KEYS if rows and f"{k}_after" in rows[0]]
    table = [["head", "n", *(f"{SHORT_NAMES[k]} before -> after (delta)" for k in keys)]]
    for r in rows:
        cells = [str(r["head"]), str(r["n_structures"])]
        for k in keys:
            b, a, d = r[f"{k}_before"], r[f"{k}_after"], r[f"{k}_delta"]
            before = NA if b == NA else fmt_metric(k, b)
            delta = NA if d == NA else (fmt_metric(k, d) if d is None or d < 0 else "+" + fmt_metric(k, d))
            cells.append(f"{before} -> {fmt_metric(k, a)} ({delta})")
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
