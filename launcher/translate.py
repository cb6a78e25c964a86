"""Translation between the plain ``run.yaml`` door, Hydra overrides and RunSpec.

A plain ``run.yaml`` is either one run (a mapping of schema keys) or a ``runs:`` list. In the
list form, the other top-level keys are defaults every run starts from, and a top-level
``launcher:`` mapping picks the submission preset (see ``conf/hydra/launcher/``). Keys may be
nested (``data: {train: x}``) or dotted (``data.train: x``). Relative paths resolve against the
YAML file's folder.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from launcher.errors import ConfigError
from launcher.schema import PATH_KEYS, RunSpec, get_key, set_key, spec_from_dict

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
    import os

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


# --------------------------------------------------------------------------------------------
# Hydra side
# --------------------------------------------------------------------------------------------

def _override_value(value: Any) -> str:
    """Format a value for a Hydra command-line override (quoted where the grammar needs it)."""
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if value == "" or any(c in value for c in " ,:[]{}()='\"\\*?$") or value.lower() in ("null", "true", "false"):
            return _quote(value)
        try:
            float(value)
            return _quote(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _quote(value: str) -> str:
    """Single-quote for Hydra's grammar: escape quotes, and backslashes only where they precede one."""
    import re

    body = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
    return "'" + body + "'"


def spec_to_overrides(spec: RunSpec, *, only_changed: bool = True) -> List[str]:
    """Hydra overrides that reproduce ``spec`` on top of the schema defaults.

    ``backend=`` and ``task=`` select the config groups; every other key is a plain override.
    Keys the groups set (e.g. MACE's train.head_key) are always written so the group defaults
    cannot change the result.
    """
    from launcher.schema import iter_fields

    defaults = RunSpec()
    out = [f"backend={spec.backend}", f"task={spec.task}"]
    for key, _f, _t in iter_fields():
        if key in ("backend", "task"):
            continue
        value = get_key(spec, key)
        if only_changed and value == get_key(defaults, key) and key not in GROUP_SET_KEYS:
            continue
        prefix = "++" if key in ("backend_env",) else ""
        out.append(f"{prefix}{key}={_override_value(value)}")
    return out


# keys a config group may set: always emitted so composition with groups round-trips
GROUP_SET_KEYS = ("device", "run_dir", "train.head_key", "train.input_json", "train.epochs", "data.train",
                  "data.val", "data.test", "train.dtype", "train.batch_size", "train.config_yml", "train.lr",
                  "train.scheduler", "train.max_grad_norm", "train.optimizer", "train.energy_weight",
                  "train.force_weight", "train.weight_decay", "data.batch_size")


def spec_to_experiment_yaml(spec: RunSpec) -> str:
    """A ``conf/experiment/NAME.yaml`` (``launch +experiment=NAME``) equal to ``spec``."""
    import yaml

    body = spec.to_dict()
    backend, task = body.pop("backend"), body.pop("task")
    lines = [
        "# @package _global_",
        "defaults:",
        f"  - override /backend: {backend}",
        f"  - override /task: {task}",
        "  - _self_",
        "",
    ]
    return "\n".join(lines) + yaml.safe_dump(body, sort_keys=False)


def spec_from_hydra_cfg(cfg: Any, *, base_dir: Optional[Path] = None) -> RunSpec:
    """Composed Hydra config (DictConfig) -> RunSpec, paths absolute against base_dir (the cwd).

    A config composed over the structured schema is already type-checked, so it converts
    directly; anything else goes through the same checked merge as a run.yaml.
    """
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    if "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    if OmegaConf.get_type(cfg) is RunSpec:
        try:
            spec = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            raise ConfigError(f"command line: bad value for '{key}': {str(e).strip().splitlines()[0]}") from None
    else:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        spec = spec_from_dict(container, source="command line")
    assert isinstance(spec, RunSpec)
    return resolve_paths(spec, base_dir or Path.cwd())


def hydra_cfg_to_run_yaml(cfg: Any, *, base_dir: Optional[Path] = None) -> str:
    return dump_run_yaml(spec_from_hydra_cfg(cfg, base_dir=base_dir))
