"""The search space of an Optuna study (``hydra/sweeper=optuna``), checked before optuna is imported.

Importing optuna (scipy, its samplers) takes seconds; a typo in a search space must not. Everything here works on
Hydra's parsed overrides and the schema's key types alone, so a bad space is one line and exit 2 well within a
second; the values the space reaches are preflighted afterwards by :func:`launcher.sweep.check_study`.
"""
from __future__ import annotations

import typing
from typing import Any, List, Optional, Sequence, Tuple

from launcher.core.errors import ConfigError
from launcher.core.schema import CHOICES, _leaf_types, coerce_leaf
from launcher.sweep import _GROUPS


def search_space_problems(overrides: Sequence[str], search_space: Optional[Any] = None) -> List[str]:
    """Keys an Optuna study cannot sample as asked (one line each), from the override strings alone (the sweeper's
    ``params`` then the command line) and ``hydra.sweeper.search_space``: Hydra's own settings, ``eval.objective``,
    unknown keys, numbers for a key that takes none, floats for an int key, empty or reversed bounds, choices that
    are not of the key's type, sweeps Optuna has no distribution for. Imports neither optuna nor a backend, so a bad
    space is refused before the slow imports; the empty list when there is something to search and it is sound."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed: dict = {}
    problems: List[str] = []
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except OverrideParseException as e:  # e.g. hydra.sweeper.params from a config file
            lines = [ln for ln in str(e).splitlines() if not ln.strip().startswith("See https://")]
            problems.append(f"{text}: {' '.join(' '.join(lines).split())}")
            continue
        parsed[o.get_key_element()] = o
    space = {k: v for k, v in dict(search_space or {}).items() if k not in parsed}
    for key, o in parsed.items():
        if o.is_sweep_override():
            problems += _sweep_problems(key, o.input_line, o)
    for key, dist in space.items():
        problems += _search_space_problems(key, dist)
    if not problems and not space and not any(o.is_sweep_override() for o in parsed.values()):
        problems.append("hydra/sweeper=optuna: nothing to search; give at least one key a range, e.g. "
                        "'train.lr=interval(1e-4,1e-2)', 'train.batch_size=range(4,17,4)' or "
                        "'train.optimizer=choice(adam,adamw)'")
    return problems


def _key_problem(key: str, what: str) -> Tuple[Optional[str], Any]:
    """(the one line refusing ``key`` outright, or None; the key's base type, None for a config group)."""
    if key.startswith("hydra.") or key.startswith("hydra/"):
        return f"{what}: an Optuna study samples run keys only; Hydra's own settings stay fixed", None
    if key == "eval.objective":
        return f"{what}: eval.objective is what the study minimises; it cannot be sampled", None
    if key in _GROUPS:
        return None, None
    t = _leaf_types().get(key)
    if t is None:
        try:
            coerce_leaf(key, None, source=what)
        except ConfigError as e:  # the schema's unknown-key message
            return str(e), None
        return f"{what}: unknown key '{key}'", None  # pragma: no cover - coerce names it
    args = [a for a in typing.get_args(t) if a is not type(None)] if typing.get_origin(t) is typing.Union else [t]
    return None, args[0] if args else t


def _numbers_problem(key: str, what: str, base: Any, values: Sequence[Any]) -> Optional[str]:
    if base is None:
        return f"{what}: {key} is a config group; sample its options with choice(...)"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return f"{what}: expected numbers"
    if base is bool or base not in (int, float):
        return f"{what}: samples numbers, but {key} takes a {getattr(base, '__name__', str(base))}; list its values " \
               f"with choice(...)"
    if base is int and not all(float(v).is_integer() for v in values):
        return f"{what}: samples floats, but {key} takes an int; give int bounds (e.g. interval(1, 8))"
    return None


def _choices_problem(key: str, what: str, values: Sequence[Any]) -> Optional[str]:
    if not values:
        return f"{what}: no choices"
    allowed = CHOICES.get(key)
    for v in values:
        try:
            coerce_leaf(key, v, source=what)
        except ConfigError:
            return f"{what}: choice {v!r} is not a valid value of {key}"
        if allowed is not None and v not in allowed:
            return f"{what}: choice {v!r}: {key} is one of {', '.join(map(str, allowed))}"
    return None


def _sweep_problems(key: str, what: str, o: Any) -> List[str]:
    """The problems of one sweep override (choice, range or interval) of a study."""
    refused, base = _key_problem(key, what)
    if refused:
        return [refused]
    value = o.value()
    if type(value).__name__ == "Glob":
        return [f"{what}: an Optuna study samples choice(...), range(...) or interval(...), not glob(...)"]
    if o.is_range_sweep() and isinstance(value.step, (int, float)) and not value.step > 0:
        return [f"{what}: expected range(low, high, step) with step > 0"]
    if o.is_choice_sweep() or (o.is_range_sweep() and value.shuffle):
        values = list(o.sweep_iterator())
        if base is None and key in _GROUPS:
            return [] if values else [f"{what}: no choices"]  # every option is composed and preflighted
        found = _choices_problem(key, what, values)
        return [found] if found else []
    if o.is_range_sweep():
        found = _numbers_problem(key, what, base, [value.start, value.stop, value.step])
        if found is None and not value.start < value.stop:
            found = f"{what}: an empty range (expected range(low, high, step) with low < high)"
        return [found] if found else []
    if o.is_interval_sweep():
        found = _numbers_problem(key, what, base, [value.start, value.end])
        if found is None and not value.start < value.end:
            found = f"{what}: expected interval(low, high) with low < high"
        if found is None and "log" in value.tags and value.start <= 0:
            found = f"{what}: a log interval needs low > 0"
        return [found] if found else []
    return [f"{what}: an Optuna study samples choice(...), range(...) or interval(...), not this sweep"]  # pragma: no cover


def _search_space_problems(key: str, dist: Any) -> List[str]:
    """The problems of one ``hydra.sweeper.search_space`` entry (type, low, high, step, log, choices)."""
    what = f"hydra.sweeper.search_space.{key}"
    refused, base = _key_problem(key, what)
    if refused:
        return [refused]
    get = dist.get if hasattr(dist, "get") else (lambda k, d=None: getattr(dist, k, d))
    kind = str(get("type", "")).split(".")[-1].lower()
    if kind == "categorical":
        found = _choices_problem(key, what, list(get("choices") or []))
        return [found] if found else []
    if kind not in ("int", "float"):
        return [f"{what}: type must be int, float or categorical, got {get('type')!r}"]
    low, high = get("low"), get("high")
    found = _numbers_problem(key, what, base, [low, high])
    if found is None and base is int and kind == "float":
        found = f"{what}: samples floats, but {key} takes an int; use type: int"
    if found is None and not low <= high:
        found = f"{what}: expected low <= high, got {low} and {high}"
    return [found] if found else []
