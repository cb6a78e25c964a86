"""Reading and writing run specs: plain run.yaml files, dotted-key mappings, path resolution.

A plain ``run.yaml`` is either one run (a mapping of schema keys) or a ``runs:`` list. In the
list form, the other top-level keys are defaults every run starts from, and a top-level
``launcher:`` mapping picks the submission preset (see ``conf/hydra/launcher/``). Keys may be
nested (``data: {train: x}``) or dotted (``data.train: x``). Every run must name ``backend``,
``task`` and ``run_dir`` (directly or through the list's defaults): this door has no hidden defaults
for them, unlike the Hydra door's config groups. Relative paths resolve against the
YAML file's folder; ``run_dir/run.yaml`` holds the resolved spec with absolute paths.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from launcher.core.errors import ConfigError, ConfigErrors
from launcher.core.schema import (CHOICES, PATH_KEYS, REQUIRED_RUN_KEYS, RunSpec, get_key, set_key,
                                  spec_from_dict)

RUNS_KEY = "runs"
LAUNCHER_KEY = "launcher"


# --------------------------------------------------------------------------------------------
# Mapping helpers
# --------------------------------------------------------------------------------------------

def expand_dotted(raw: Dict[str, Any], *, source: str) -> Dict[str, Any]:
    """``{"data.train": x}`` -> ``{"data": {"train": x}}`` (nested keys pass through).

    A field set twice, once dotted and once nested (``train.epochs: 1`` beside ``train: {epochs: 2}``),
    is refused naming both keys (and their lines, for a mapping read by :mod:`launcher.core.readers`).
    """
    _refuse_overlaps(raw, source=source)
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            value = expand_dotted(value, source=source)
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source}: key '{key}' conflicts with a non-mapping value of '{part}'")
            node = nxt
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    return out


def _leaf_paths(prefix: str, value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaf_paths(f"{prefix}.{k}", v)
    else:
        yield prefix


def _refuse_overlaps(raw: Dict[str, Any], *, source: str) -> None:
    """Refuse two keys of one mapping that set the same field (or a field and a value above it)."""
    from launcher.core.readers import key_line

    owner: Dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: keys must be strings, got {key!r}")
        for leaf in _leaf_paths(key, value):
            hits = [p for p in owner if p == leaf or p.startswith(leaf + ".") or leaf.startswith(p + ".")]
            if hits and owner[hits[0]] != key:
                other = owner[hits[0]]

                def at(k: str) -> str:
                    line = key_line(raw, k)
                    return f"'{k}' (line {line})" if line else f"'{k}'"

                raise ConfigError(f"{source}: {at(key)} and {at(other)} both set {min(leaf, hits[0], key=len)}; "
                                  f"keep one")
            owner[leaf] = key


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def escape_interpolation(value: str) -> str:
    """``value`` as OmegaConf text that reads back as exactly ``value``: each ``${`` (with the backslashes
    before it doubled) escaped, so a literal is not taken for an interpolation."""
    import re

    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)


def escape_strings(obj: Any) -> Any:
    """``obj`` (nested dicts/lists) with every string passed through :func:`escape_interpolation`."""
    if isinstance(obj, str):
        return escape_interpolation(obj)
    if isinstance(obj, dict):
        return {k: escape_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [escape_strings(v) for v in obj]
    return obj


def resolve_paths(spec: RunSpec, base_dir: Path) -> RunSpec:
    """Make every path key absolute against base_dir (``~`` expanded). Commands stay as given."""
    for key in PATH_KEYS:
        value = get_key(spec, key)
        if value is None or value == "":
            continue
        if key == "backend_python" and "/" not in str(value):
            continue  # a command name on PATH, e.g. "python3"
        p = Path(str(value)).expanduser()
        if not p.is_absolute():
            p = base_dir / p
        set_key(spec, key, str(Path(_normpath(p))))
    heads = spec.eval.heads   # head -> data path: each value is a path key of its own
    for head, value in list(heads.items()):
        if value:
            p = Path(str(value)).expanduser()
            heads[head] = _normpath(p if p.is_absolute() else base_dir / p)
    from launcher.core.replay_spec import PATH_LIST_KEYS

    for key in PATH_LIST_KEYS:
        set_key(spec, key, [_normpath(base_dir / Path(str(v)).expanduser()) for v in get_key(spec, key) or []])
    return spec


def _normpath(p: Path) -> str:
    return os.path.normpath(str(p))


# --------------------------------------------------------------------------------------------
# Plain run.yaml door
# --------------------------------------------------------------------------------------------

def _load_yaml(path: Path) -> Any:
    from launcher.core.readers import load_yaml

    return load_yaml(path, key="--config")


def _required_hint(key: str) -> str:
    if key == "run_dir":
        return "the run's output directory"
    return "one of " + ", ".join(CHOICES[key])


def missing_required(mapping: Dict[str, Any], *, source: str, supplied: Iterable[str] = ()) -> List[str]:
    """One line per key of ``REQUIRED_RUN_KEYS`` that ``mapping`` (a nested run mapping) lacks or leaves
    empty; keys in ``supplied`` are set later (``launch-run --set``) and are not reported."""
    supplied = set(supplied)
    return [f"{source}: {key}: required in every run ({_required_hint(key)})"
            for key in REQUIRED_RUN_KEYS if key not in supplied and mapping.get(key) in (None, "")]


def parse_run_file(path: Path, *, supplied: Iterable[str] = ()) -> Tuple[List[RunSpec], Dict[str, Any]]:
    """Read a plain run.yaml: returns (specs, launcher settings). Paths absolute, specs unvalidated.

    Every run must name ``backend``, ``task`` and ``run_dir`` after the ``runs:`` defaults are merged
    (``supplied``: top-level keys an override sets in every run). Bad keys and missing keys of all runs
    are raised together as one :class:`ConfigErrors`, one line each.
    """
    path = Path(path).expanduser().resolve()
    raw = _load_yaml(path)
    if raw is None:
        raise ConfigError(f"--config: {path} is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold a mapping (one run) or a 'runs:' list")
    raw = copy.copy(raw)  # keeps the line of each key (readers.MarkedDict) for messages
    launcher = raw.pop(LAUNCHER_KEY, None) or {}
    if not isinstance(launcher, dict):
        raise ConfigError(f"{path}: 'launcher' must be a mapping (preset and its keys)")
    if RUNS_KEY in raw:
        runs = raw.pop(RUNS_KEY)
        if not isinstance(runs, list) or not runs:
            raise ConfigError(f"{path}: 'runs' must be a non-empty list of run mappings")
        defaults = expand_dotted(raw, source=str(path))
        entries = []
        for i, entry in enumerate(runs):
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: runs[{i}] must be a mapping of run keys")
            entries.append((f"{path}: runs[{i}]", deep_merge(defaults, expand_dotted(entry, source=f"{path}: runs[{i}]"))))
    else:
        entries = [(str(path), expand_dotted(raw, source=str(path)))]
    specs, problems = [], []
    supplied = list(supplied)
    for source, mapping in entries:
        try:
            spec = spec_from_dict(mapping, source=source)
        except ConfigError as e:
            problems.extend(e.problems if isinstance(e, ConfigErrors) else [str(e)])
        else:
            specs.append(resolve_paths(spec, path.parent))
        problems.extend(missing_required(mapping, source=source, supplied=supplied))
    if problems:
        raise ConfigErrors(problems)
    names = [s.run_name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{path}: run names must be unique (set 'name' per run); repeated: {', '.join(dupes)}")
    return specs, launcher


def select_runs(specs: List[RunSpec], names: Optional[List[str]], *, source: str) -> List[RunSpec]:
    if not names:
        return specs
    known = {s.run_name: s for s in specs}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"--run: no run named {', '.join(missing)} in {source}; runs: {', '.join(known)}")
    return [known[n] for n in names]


# --------------------------------------------------------------------------------------------
# run_dir/run.yaml: dump and reload (round trip)
# --------------------------------------------------------------------------------------------

def dump_run_yaml(spec: RunSpec) -> str:
    import yaml

    header = "# Resolved mlip-launch run spec. Re-run as is: launch-run --config run.yaml\n"
    # a literal "${" is escaped: reading the file back must give the same strings, not interpolations
    return header + yaml.safe_dump(escape_strings(spec.to_dict()), sort_keys=False, default_flow_style=False,
                                  allow_unicode=True)


def load_run_yaml_spec(path: Path) -> RunSpec:
    specs, _ = parse_run_file(Path(path))
    if len(specs) != 1:
        raise ConfigError(f"{path}: expected one run, found {len(specs)}")
    return specs[0]
