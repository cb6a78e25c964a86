"""How the FairChem backends take each ``data.replay`` key (:mod:`trainers.fairchem.replay` mixes the records
into the training set), and what they refuse, one line per key, in their check: ``select=fps`` (the descriptors
are a MACE model's), ``weight`` other than 1, ``head``, and ``val_samples`` other than null/0 (FairChem reports no
errors of part of its training set)."""
from __future__ import annotations

from typing import Any, Dict, List

from launcher.core.replay_spec import replay_on

#: How each data.replay key reaches FairChem (docs/schema.md's backend table).
REPLAY_KEY_DOCS: Dict[str, str] = {
    "data.replay.paths": "the selected replay records are copied into the derived training set (a folder of shards "
                         "with the training split's records, read by FairChem as one dataset)",
    "data.replay.max_samples": "at most this many replay records are mixed in",
    "data.replay.pool": "the seeded candidates the replay records are taken from",
    "data.replay.ratio": "replay records = min(max_samples, max(1, round(ratio x training records))): shuffled batches "
                         "hold replay at ratio / (1 + ratio) on average",
    "data.replay.select": "random only (fps selects on a MACE model's descriptors)",
    "data.replay.weight": "1 only (FairChem weighs every training record alike)",
    "data.replay.head": "null only (FairChem models have a single head)",
    "data.replay.val_samples": "null or 0 only (FairChem reports no errors of part of its training set)",
}


def replay_problems(spec: Any) -> List[str]:
    """One line per data.replay key FairChem cannot honour."""
    if not replay_on(spec):
        return []
    r, b = spec.data.replay, spec.backend
    p: List[str] = []
    if r.select != "random":
        p.append(f"data.replay.select: '{r.select}' is not supported by backend={b} (random only: fps selects on a "
                 "MACE model's descriptors)")
    if r.weight != 1.0:
        p.append(f"data.replay.weight: {r.weight:g} is not supported by backend={b} (FairChem weighs every training "
                 "record alike; 1 only)")
    if r.head is not None:
        p.append(f"data.replay.head: not supported by backend={b} (FairChem models have a single head); leave it unset")
    if r.val_samples not in (None, 0):
        p.append(f"data.replay.val_samples: {r.val_samples} held-out replay records cannot be reported by backend={b} "
                 "(FairChem reports no errors of part of its training set); set data.replay.val_samples=0")
    return p
