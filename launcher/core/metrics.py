"""Evaluation metrics and output files shared by every backend (pure numpy, no torch): the names the backends and
the console import, from the modules that implement them.

Both the core MACE trainer and the FairChem runner write ``run_dir/eval/`` through these, so it holds the same
files with the same columns whichever backend made them:

- ``metrics.json`` / ``metrics.csv``: energy MAE/RMSE (total and per atom), force MAE/RMSE, counts; stress
  MAE/RMSE (``stress_mae``/``stress_rmse``, eV/Å^3) when the backend predicted stress
  (:mod:`launcher.core.eval_errors`, :mod:`launcher.core.eval_files`)
- ``predictions.csv`` and ``predictions_forces.npz`` (:mod:`launcher.core.eval_files`)
- ``errors_by_group.csv`` (evaluate, ``eval.group_by`` set): the errors per label of that key; the same numbers
  are ``by_group`` in metrics.json (:mod:`launcher.core.eval_groups`)
- ``parity.png`` (evaluate): predicted vs reference energy per atom and force components
  (:mod:`launcher.core.parity`)

:class:`EvalStream` (:mod:`launcher.core.eval_stream`) builds the same files, bit for bit, batch by batch;
:func:`fmt_metric` / :func:`metrics_line` (:mod:`launcher.core.console_numbers`) are the console's form of these
numbers (units, 4 significant digits); the files keep full precision in eV and eV/Å.
"""
from __future__ import annotations

from launcher.core.console_numbers import SHORT_NAMES, SIG_DIGITS, fmt_metric, metric_unit, metrics_line, sig
from launcher.core.eval_errors import METRIC_KEYS, EvalArrays, ForceErrors, compute_metrics, stress_errors
from launcher.core.eval_files import STRESS_COLUMNS, write_eval_outputs, write_metrics_files
from launcher.core.eval_groups import (GROUP_COLUMNS, NO_GROUP, group_label, group_metrics, resolve_groups,
                                       write_group_csv, write_group_outputs)
from launcher.core.eval_stream import EvalStream
from launcher.core.parity import PARITY_MAX_POINTS, write_parity_png

__all__ = [
    "METRIC_KEYS", "STRESS_COLUMNS", "GROUP_COLUMNS", "NO_GROUP", "PARITY_MAX_POINTS", "SHORT_NAMES", "SIG_DIGITS",
    "EvalArrays", "EvalStream", "ForceErrors", "compute_metrics", "stress_errors", "write_eval_outputs",
    "write_metrics_files", "group_label", "group_metrics", "resolve_groups", "write_group_csv",
    "write_group_outputs", "write_parity_png", "fmt_metric", "metric_unit", "metrics_line", "sig",
]
