"""Which backends exist: the entry-point group ``mlip_launch.backends`` (name -> ``module:Class``).

Reading the group imports no backend: the ``backend=`` choices, preflight and dispatch all derive
from it, and a backend module is imported only when a spec names it (see ``launcher.backends``).
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

GROUP = "mlip_launch.backends"


@functools.lru_cache(maxsize=1)
def backend_targets() -> Dict[str, str]:
    """Registered backend name -> ``module:Class``, in name order (the first registration of a name wins)."""
    from importlib.metadata import entry_points

    found: Dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return dict(sorted(found.items()))


def backend_names() -> Tuple[str, ...]:
    return tuple(backend_targets())


def backend_conf_dirs() -> Tuple[str, ...]:
    """Config folders that backends installed as their own packages bring along.

    A backend outside this project ships its Hydra file as ``<its top package>/conf/backend/NAME.yaml``;
    that ``conf`` folder joins Hydra's search path (``hydra_plugins.mlip_launch.searchpath``). Found
    without importing the backend (only its top package is located).
    """
    import importlib.util
    from pathlib import Path

    dirs = []
    for name, target in backend_targets().items():
        top = target.partition(":")[0].split(".")[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            conf = Path(loc) / "conf"
            if (conf / "backend" / f"{name}.yaml").is_file() and str(conf) not in dirs:
                dirs.append(str(conf))
    return tuple(dirs)
