"""``data.replay`` on the FairChem backends: refused key by key in their check (``derive.refused_keys``), one
line each, before anything runs.

FairChem v1's trainer has one loss weight and one head for every training record, no second loss pass and no
separate error report for a subset, so ``weight``, ``head``, ``ratio`` (a per-batch mix), the held-out replay
errors and ``fps`` (the base model's descriptors) could not be honoured, and mixing the records into the
derived training set is not built. The whole section is refused rather than half honoured.
"""
from __future__ import annotations

from typing import Dict

from launcher.core.replay_spec import ReplaySpec
from launcher.core.schema import iter_fields

_WHY = "replay of pretraining structures is available with backend=mace only (FairChem's trainer has no separate " \
       "replay loss pass, weight, head or replay errors)"

#: data.replay.<key> -> why FairChem refuses it (merged into trainers.fairchem.derive.REFUSED).
REPLAY_REFUSED: Dict[str, str] = {f"data.replay.{key}": _WHY for key, _f, _t in iter_fields(ReplaySpec)}
