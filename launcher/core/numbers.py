"""Numbers a run can use: every float key of the schema finite, seeds in range, no NaN/inf in a model's config.

JSON and YAML readers accept ``NaN`` / ``.nan`` / ``inf``, and comparisons with NaN are false, so range rules
alone let them through; these checks run in preflight (schema validation, the backends' checks). No torch here.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Optional

# Seeds reach torch.manual_seed (which takes at most 2**64-1) and numpy's PCG64 (which refuses negatives).
SEED_KEYS = ("seed", "train.seed", "data.train_indices.seed", "data.val_indices.seed", "data.test_indices.seed")
SEED_MAX = 2**64 - 1


def nonfinite_number(obj: Any, prefix: str = "") -> Optional[tuple]:
    """``(dotted key, value)`` of the first NaN/inf number in a nested mapping / list (a model.json, a config),
    else None. JSON and YAML readers accept ``NaN`` / ``.nan``; no model can train with one."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return prefix or "value", obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = nonfinite_number(v, f"{prefix}.{k}" if prefix else str(k))
        if found:
            return found
    return None


def _value(spec: Any, dotted: str) -> Any:
    obj = spec
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def number_problems(spec: Any, keys: Iterable[str]) -> List[str]:
    """Every number the schema reads must be usable: each float among ``keys`` (the schema's leaf keys) finite
    (one rule over all of them, so a new key is covered), each seed within 0..2**64-1."""
    p: List[str] = []
    for key in keys:
        value = _value(spec, key)
        if isinstance(value, float) and not math.isfinite(value):
            p.append(f"{key}: must be a finite number, got {value}")
    for key in SEED_KEYS:
        value = _value(spec, key)
        if value is not None and not (0 <= value <= SEED_MAX):
            p.append(f"{key}: must be an integer in 0..2**64-1 (torch.manual_seed's range; numpy refuses "
                     f"negative seeds), got {value}")
    return p
