"""The console's form of the eval and training numbers: 4 significant digits, one unit per quantity (README
"Units"); the files keep eV, eV/atom and eV/Å at full precision. Pure Python, no torch."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.eval_errors import METRIC_KEYS

#: Console units, one per quantity (README "Units"): energy per atom in meV/atom, total energy in eV, forces
#: in eV/Å. Files (metrics.json, metrics.jsonl, the csvs) keep eV, eV/atom and eV/Å at full precision.
SIG_DIGITS = 4
SHORT_NAMES = {"energy_mae": "E_mae", "energy_rmse": "E_rmse", "energy_mae_per_atom": "E_mae/atom",
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
        parts.append(f"{SHORT_NAMES.get(k, k)}={f'{v:.4g}' if k == 'lr' and v is not None else fmt_metric(k, v)}")
    return head + sep.join(parts)


def _order(key: str) -> int:
    """loss, energies, forces, the rest (a stable sort keeps each group's own order)."""
    k = key.lower()
    return 0 if k == "loss" else 1 if k.startswith("energy") else 2 if k.startswith("force") else 3
