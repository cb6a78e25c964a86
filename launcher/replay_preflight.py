"""Preflight of ``data.replay.paths``: each file named exists and reads as the job reads it (no torch; nothing
is ever downloaded for replay). The elements of its records against the model's are the backend's check
(``trainers/mace/replay_checks.py``); a backend that cannot replay refuses the key in its own check."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List

from launcher.core.replay_spec import replay_on


def replay_input_problems(spec: Any) -> List[str]:
    """One line per replay file that is missing or unreadable, naming ``data.replay.paths[i]`` and the file."""
    if not replay_on(spec):
        return []
    from launcher.preflight import _check_dataset, _special_file

    problems: List[str] = []
    for i, path in enumerate(spec.data.replay.paths):
        key = f"data.replay.paths[{i}]"
        p = Path(path)
        if not p.exists():
            problems.append(f"{key}: not found: {p} (replay data is never downloaded: give a local LMDB file or "
                            "folder of *.lmdb shards of the pretraining distribution)")
            continue
        special = _special_file(key, p)
        if special:
            problems.append(special)
            continue
        _check_dataset(key, path, problems, bool(spec.data.trust_pickles))
    return problems
