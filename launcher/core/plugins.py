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
    """Registered backend name -> ``module:Class``, in name order (the first registration of a name wins,
    in ``sys.path`` order, as for ``importlib.metadata.entry_points``)."""
    found: Dict[str, str] = {}
    for name, value in _scan_entry_points(GROUP):
        found.setdefault(name, value)
    return dict(sorted(found.items()))


def _scan_entry_points(group: str):
    """``(name, value)`` of ``group`` in the ``entry_points.txt`` of every distribution on ``sys.path``.

    The same files ``importlib.metadata`` reads, without importing it: that import alone costs ~30 ms,
    5% of ``launch --help``, which reads the group on every start.
    """
    import os
    import sys

    seen = set()
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            dist = name.rsplit("-", 1)[0].lower().replace("_", "-") if name.endswith(".dist-info") else name
            if dist in seen:
                continue  # a distribution found earlier on the path shadows this copy
            seen.add(dist)
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            yield from _group_entries(text, group)


def _group_entries(text: str, group: str):
    """The ``name = value`` lines of one ``[group]`` section of an entry_points.txt (INI syntax)."""
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current == group and "=" in line:
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


def backend_names() -> Tuple[str, ...]:
    return tuple(backend_targets())


@functools.lru_cache(maxsize=1)
def default_backend() -> str:
    """The backend a run gets when it names none: the ``backend`` entry of the Hydra door's defaults list
    (``conf/config.yaml``), so that the schema's default and the Hydra door's are one setting. Read as text,
    without importing ``conf`` (a package of the doors' layer); the first registered name where it is missing."""
    import importlib.util
    import re
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("conf")
        text = (Path(spec.origin).parent / "config.yaml").read_text(encoding="utf-8") if spec and spec.origin else ""
    except (ImportError, ValueError, OSError):
        text = ""
    m = re.search(r"^\s*-\s*backend\s*:\s*([\w.-]+)\s*$", text, re.MULTILINE)
    names = backend_names()
    return m.group(1) if m else (names[0] if names else "")


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
