"""Loading FairChem v1 configs outside the FairChem repository, and applying ``--a.b=value`` overrides.

FairChem resolves ``includes:`` and relative data files (scale files, linear references) against
the current directory, i.e. it expects to run from its repository root. We flatten a config once,
here: every ``includes:`` entry and every relative path-like value is resolved against the file
that names it, and when that fails, against the nearest ancestor folder that holds the relative
path (so ``configs/oc20/.../gemnet-oc.pt`` is found from anywhere inside a FairChem-style tree).
The flattened config written into the run directory is then self-contained. No torch here.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from launcher.core.errors import ConfigError
from launcher.core.specio import deep_merge  # FairChem's merge too: mappings recursively, lists replaced

# Values that name files FairChem opens itself; checked before anything runs.
PATH_SUFFIXES = (".pt", ".pth", ".npz", ".npy", ".pkl", ".json", ".yml", ".yaml", ".lmdb", ".aselmdb", ".txt", ".csv")


def _yaml_load(path: Path) -> Dict[str, Any]:
    """A FairChem config file read safely (duplicate keys refused, as FairChem does), one line per problem."""
    from launcher.core.readers import load_yaml

    data = load_yaml(path, key="train.config_yml")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"train.config_yml: {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def find_relative(rel: str, start_dir: Path) -> Optional[Path]:
    """``start_dir/rel``, else ``ancestor/rel`` for the nearest ancestor of start_dir holding it."""
    rel_path = Path(rel).expanduser()
    if rel_path.is_absolute():
        return rel_path if rel_path.exists() else None
    for folder in [start_dir, *start_dir.parents]:
        candidate = folder / rel_path
        if candidate.exists():
            return candidate.resolve()
    return None


def looks_like_path(value: Any) -> bool:
    """Heuristic for FairChem values that name files: a relative path with a folder or a file suffix."""
    if not isinstance(value, str) or not value or "\n" in value or " " in value.strip():
        return False
    if "://" in value:
        return False
    return "/" in value or value.lower().endswith(PATH_SUFFIXES)


def _resolve_values(node: Any, base_dir: Path) -> Any:
    """Make relative path-like strings absolute when they resolve (others stay as written)."""
    if isinstance(node, dict):
        return {k: _resolve_values(v, base_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_values(v, base_dir) for v in node]
    if looks_like_path(node) and not os.path.isabs(node):
        found = find_relative(node, base_dir)
        if found is not None:
            return str(found)
    return node


def load_config(path: str | os.PathLike, _seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Load a FairChem config with its ``includes:`` merged (includes first, the file last) and paths resolved."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"train.config_yml: cyclic includes: {chain}")
    raw = _yaml_load(path)
    includes = raw.pop("includes", []) or []
    if not isinstance(includes, list):
        raise ConfigError(f"train.config_yml: {path}: 'includes' must be a list of files, got {type(includes).__name__}")
    merged: Dict[str, Any] = {}
    for inc in includes:
        if not isinstance(inc, str):
            raise ConfigError(f"train.config_yml: {path}: 'includes' entries must be file paths, got {inc!r}")
        found = find_relative(inc, path.parent)
        if found is None or not found.is_file():
            raise ConfigError(
                f"train.config_yml: {path}: included file '{inc}' not found beside the config or under any of its parent folders"
            )
        merged = deep_merge(merged, load_config(found, (*_seen, path)))
    return deep_merge(merged, _resolve_values(raw, path.parent))


# ---------------------------------------------------------------------------------------------
# Command-line style overrides (backend_args)
# ---------------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """As FairChem parses ``--a.b=value``: a Python literal when it is one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def is_override(arg: str) -> bool:
    """``--a.b=value`` (a dotted key) is a config override; anything else is a FairChem CLI flag."""
    if not arg.startswith("--") or "=" not in arg:
        return False
    key = arg[2:].split("=", 1)[0]
    return "." in key and all(part for part in key.split("."))


def split_backend_args(args: Iterable[str]) -> Tuple[List[Tuple[str, Any]], List[str]]:
    """Split ``backend_args`` into config overrides ``[(dotted_key, value)]`` and pass-through CLI args."""
    overrides: List[Tuple[str, Any]] = []
    passthrough: List[str] = []
    for arg in args:
        arg = str(arg)
        if is_override(arg):
            key, value = arg[2:].split("=", 1)
            overrides.append((key, parse_value(value)))
        else:
            passthrough.append(arg)
    return overrides, passthrough


def get_dotted(config: Dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(config: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def dump_config(config: Dict[str, Any], header: str = "") -> str:
    """YAML text of a derived config (key order kept), with a comment header."""
    import yaml

    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=120)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body


# Config values that name files FairChem must open: (dotted key with '*' for a split, description).
FILE_KEYS = ("model.scale_file", "dataset.*.lin_ref", "dataset.*.oc20_ref")


def missing_files(config: Dict[str, Any], origin: str = "train.config_yml") -> List[str]:
    """Problems with files the config names (scale file, linear references), one line each."""
    problems: List[str] = []
    datasets = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    for key in FILE_KEYS:
        keys: List[Tuple[str, Any]]
        if "*" in key:
            _, rest = key.split("*.", 1)
            keys = [(f"dataset.{s}.{rest}", (v or {}).get(rest) if isinstance(v, dict) else None)
                    for s, v in datasets.items()]
        else:
            keys = [(key, get_dotted(config, key))]
        for dotted, value in keys:
            if isinstance(value, str) and value and looks_like_path(value) and not os.path.exists(value):
                fix = (" (relative paths are searched beside the config and in its parent folders)"
                       if origin == "train.config_yml" else f" (point it at a local file with backend_args --{dotted}=PATH)")
                problems.append(f"{origin}: {dotted}: file not found: {value}{fix}")
    return problems
