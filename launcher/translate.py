"""The Hydra side of the schema: RunSpec <-> command-line overrides and experiment files.

``launch-run --to-overrides`` / ``--to-experiment`` print what the Hydra door needs to compose the
same spec; :func:`spec_from_hydra_cfg` turns a composed config into a RunSpec. Plain run.yaml
reading and writing is :mod:`launcher.core.specio`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional

from launcher.core.errors import ConfigError, ConfigErrors
from launcher.core.schema import RunSpec, get_key, spec_from_dict
from launcher.core.specio import escape_interpolation, escape_strings, resolve_paths


# --------------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_./-]+")  # strings Hydra's grammar takes unquoted (others are quoted)


def _override_value(value: Any) -> str:
    """Format a value for a Hydra command-line override (quoted unless plainly safe)."""
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if not _PLAIN.fullmatch(value) or value.lower() in ("null", "true", "false", "nan", "inf", "-inf", "+inf"):
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
    """Quote for Hydra's grammar: ``${`` escaped (a literal, not an interpolation), then the quote
    character escaped, and backslashes only where they precede it or the end. Double quotes unless the
    value holds one and no single quote: the shell line (single-quoted tokens) stays readable."""
    q = "'" if '"' in value and "'" not in value else '"'
    body = re.sub(r"(\\+)(?=" + q + r"|$)", lambda m: m.group(1) * 2, escape_interpolation(value))
    return q + body.replace(q, "\\" + q) + q


def quoted_override(override: str) -> str:
    """A command-line override Hydra's grammar refused, rewritten with its value quoted for Hydra (each item of a
    ``[...]`` list or ``a,b`` sweep quoted alone), then for bash: what to type instead."""
    import shlex

    key, sep, value = override.partition("=")
    if not sep:
        return shlex.quote(override)
    if value.startswith("[") and value.endswith("]"):
        body = "[" + ",".join(_quote(v.strip()) for v in value[1:-1].split(",") if v.strip()) + "]"
    elif "," in value:
        body = ",".join(_quote(v) for v in value.split(","))
    else:
        body = _quote(value)
    return shlex.quote(f"{key}={body}")


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _check_expressible(key: str, value: Any) -> None:
    """Refuse what no Hydra override can carry (one line naming the key) instead of printing a broken line."""
    if any("\n" in s or "\r" in s for s in _strings(value)):
        raise ConfigError(f"{key}: a value holds a line break, which a Hydra override cannot carry; "
                          f"use launch-run --config, or --to-experiment")
    if isinstance(value, dict):
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k))]
        if bad:
            raise ConfigError(f"{key}: key '{bad[0]}' is not a plain name ([A-Za-z_][A-Za-z0-9_]*), which a "
                              f"Hydra override needs; use launch-run --config, or --to-experiment")


def spec_to_overrides(spec: RunSpec, *, only_changed: bool = True) -> List[str]:
    """Hydra overrides that reproduce ``spec`` on top of the schema defaults.

    ``backend=`` and ``task=`` select the config groups; every other key is a plain override.
    Keys the groups set (e.g. MACE's train.head_key) are always written so the group defaults
    cannot change the result.
    """
    from launcher.core.schema import iter_fields

    defaults = RunSpec()
    out = [f"backend={spec.backend}", f"task={spec.task}"]
    for key, _f, _t in iter_fields():
        if key in ("backend", "task"):
            continue
        value = get_key(spec, key)
        if only_changed and value == get_key(defaults, key) and key not in GROUP_SET_KEYS:
            continue
        _check_expressible(key, value)
        prefix = "++" if key in ("backend_env", "eval.heads") else ""
        out.append(f"{prefix}{key}={_override_value(value)}")
    return out


def spec_to_shell_line(spec: RunSpec) -> str:
    """``spec_to_overrides`` as one bash line: each token quoted (``shlex.quote``) so that bash hands
    Hydra exactly the override token, whatever the values hold (spaces, ``=``, quotes, brackets, ``$``)."""
    import shlex

    return " ".join(shlex.quote(token) for token in spec_to_overrides(spec))


# keys a config group may set: always emitted so composition with groups round-trips
GROUP_SET_KEYS = ("device", "run_dir", "train.head_key", "train.input_json", "train.epochs", "data.train",
                  "data.val", "data.test", "train.dtype", "train.batch_size", "train.config_yml", "train.lr",
                  "train.scheduler", "train.max_grad_norm", "train.optimizer", "train.energy_weight",
                  "train.force_weight", "train.weight_decay", "data.batch_size")


def spec_to_experiment_yaml(spec: RunSpec) -> str:
    """A ``conf/experiment/NAME.yaml`` (``launch +experiment=NAME``) equal to ``spec``."""
    import yaml

    body = escape_strings(spec.to_dict())
    backend, task = body.pop("backend"), body.pop("task")
    lines = [
        "# @package _global_",
        "defaults:",
        f"  - override /backend: {backend}",
        f"  - override /task: {task}",
        "  - _self_",
        "",
    ]
    return "\n".join(lines) + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def keys_outside_schema(cfg: Any, cls: type = RunSpec, prefix: str = "") -> List[str]:
    """Dotted keys of a composed config that no schema field declares (added with Hydra's ``+key=``)."""
    import dataclasses
    import typing

    from omegaconf import DictConfig

    hints = typing.get_type_hints(cls)
    declared = {f.name for f in dataclasses.fields(cls)}
    out: List[str] = []
    for key in cfg.keys():
        if key not in declared:
            out.append(f"{prefix}{key}")
            continue
        t = hints[key]
        if dataclasses.is_dataclass(t):
            node = cfg._get_node(key)
            if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
                out.extend(keys_outside_schema(node, t, f"{prefix}{key}."))
    return out


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
        extra = keys_outside_schema(cfg)
        if extra:  # Hydra's `+key=` adds a key the structured schema would silently drop
            from launcher.core.schema import _key_error_message, _KeyLike

            raise ConfigErrors([_key_error_message(_KeyLike(k), "command line") for k in extra])
        try:
            spec = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as e:
            from launcher.core.spec_messages import interpolation_message
            from launcher.hydra_source import where_set

            key = getattr(e, "full_key", None) or "?"
            node = getattr(e, "child_node", None)
            raw = node._value() if node is not None and hasattr(node, "_value") else None
            line = interpolation_message(e, where_set(raw) if isinstance(raw, str) else "config")
            first = str(e).strip().splitlines()[0]
            raise ConfigError(line or f"command line: bad value for '{key}': {first}") from None
    else:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        spec = spec_from_dict(container, source="command line")
    assert isinstance(spec, RunSpec)
    return resolve_paths(spec, base_dir or Path.cwd())

