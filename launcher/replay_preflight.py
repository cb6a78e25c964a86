"""Preflight of ``data.replay.paths``: each file named exists and reads as the job reads it (no torch; nothing
is ever downloaded for replay). The elements of its records against the model's are the backend's check
(``trainers/mace/replay_checks.py``); a backend that cannot replay refuses the key in its own check."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

from launcher.core.replay_spec import replay_on


def replay_input_problems(spec: Any, check_dataset: Callable[..., Optional[int]],
                          special_file: Callable[[str, Path], Optional[str]]) -> List[str]:
    """One line per replay file that is missing or unreadable, naming ``data.replay.paths[i]`` and the file;
    ``check_dataset`` / ``special_file``: preflight's own checks of a data file (as for data.train)."""
    if not replay_on(spec):
        return []
    problems: List[str] = []
    for i, path in enumerate(spec.data.replay.paths):
        key = f"data.replay.paths[{i}]"
        p = Path(path)
        if not p.exists():
            problems.append(f"{key}: not found: {p} (replay data is never downloaded: give a local LMDB file or "
                            "folder of *.lmdb shards of the pretraining distribution)")
            continue
        special = special_file(key, p)
        if special:
            problems.append(special)
            continue
        check_dataset(key, path, problems, bool(spec.data.trust_pickles))
    return problems
