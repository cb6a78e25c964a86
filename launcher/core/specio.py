"""Reading and writing run specs: plain run.yaml files, dotted-key mappings, path resolution.

A plain ``run.yaml`` is either one run (a mapping of schema keys) or a ``runs:`` list. In the
list form, the other top-level keys are defaults every run starts from, and a top-level
``launcher:`` mapping picks the submission preset (see ``conf/hydra/launcher/``). Keys may be
nested (``data: {train: x}``) or dotted (``data.train: x``). Relative paths resolve against the
YAML file's folder; ``run_dir/run.yaml`` holds the resolved spec with absolute paths.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from launcher.core.errors import ConfigError
from launcher.core.schema import PATH_KEYS, RunSpec, get_key, set_key, spec_from_dict

RUNS_KEY = "runs"
LAUNCHER_KEY = "launcher"


# --------------------------------------------------------------------------------------------
# Mapping helpers
# --------------------------------------------------------------------------------------------

def expand_dotted(raw: Dict[str, Any], *, source: str) -> Dict[str, Any]:
    """``{"data.train": x}`` -> ``{"data": {"train": x}}`` (nested keys pass through)."""
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: keys must be strings, got {key!r}")
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


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


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
    return spec


def _normpath(p: Path) -> str:
    return os.path.normpath(str(p))


# --------------------------------------------------------------------------------------------
# Plain run.yaml door
# --------------------------------------------------------------------------------------------

def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"--config: {path} is a directory, expected a run.yaml file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"--config: {path} is not valid YAML{where}") from None


def parse_run_file(path: Path) -> Tuple[List[RunSpec], Dict[str, Any]]:
    """Read a plain run.yaml: returns (specs, launcher settings). Paths absolute, specs unvalidated."""
    path = Path(path).expanduser().resolve()
    raw = _load_yaml(path)
    if raw is None:
        raise ConfigError(f"--config: {path} is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold a mapping (one run) or a 'runs:' list")
    raw = dict(raw)
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
    specs = []
    for source, mapping in entries:
        spec = spec_from_dict(mapping, source=source)
        specs.append(resolve_paths(spec, path.parent))
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
    return header + yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=False)


def load_run_yaml_spec(path: Path) -> RunSpec:
    specs, _ = parse_run_file(Path(path))
    if len(specs) != 1:
        raise ConfigError(f"{path}: expected one run, found {len(specs)}")
    return specs[0]
