"""One pipeline under every door: ``prepare`` -> ``preflight`` -> ``dispatch``.

The doors (``launch``, ``launch -m`` grids and Optuna studies, ``launch-run``) only parse what they are given,
compose or read their RunSpecs and build a :class:`Request`; the rest happens here, the same way for each door.
A dry run goes through exactly the checks a launch goes through and stops at ``dispatch``, so both get the same
verdict. Nothing here imports torch or submitit at module level: dry runs and refusals stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from launcher.core.errors import ConfigErrors
from launcher.core.schema import RunSpec
from launcher.params import LauncherParams


@dataclass
class Request:
    """What a door asks for: its points (model names already resolved), how they are labelled in messages,
    the checked launcher settings, and where a sweep's record goes."""

    specs: List[RunSpec]
    params: LauncherParams
    sweep_dir: Path
    labels: List[str] = field(default_factory=list)
    overrides: List[List[str]] = field(default_factory=list)
    prestarted: Optional[Any] = None   # a backend's early start (trainers.api), for a single in-process run
    states: List[Optional[str]] = field(default_factory=list)  # each run_dir's state, as preflight read it

    @property
    def dry_run(self) -> bool:
        return any(s.dry_run for s in self.specs)


def checked_params(params: LauncherParams) -> LauncherParams:
    """``params`` once their own one-line checks pass (:func:`launcher.submit.check_params`): every door reads its
    launcher settings through here, once, before it composes or reads a point."""
    from launcher.submit import check_params

    check_params(params)
    return params


def prepare(specs: List[RunSpec], params: LauncherParams, sweep_dir: Path, *, bases: Sequence[Path],
            labels: Optional[List[str]] = None, overrides: Optional[List[List[str]]] = None,
            prestarted: Optional[Any] = None) -> Request:
    """The door's RunSpecs -> a :class:`Request`; each ``model_in`` written as a model name becomes its verified
    cached file, once (``bases``: the folders relative paths were resolved against)."""
    from launcher.models import resolve_model_names

    resolve_model_names(specs, list(bases))
    return Request(specs=specs, params=params, sweep_dir=Path(sweep_dir),
                   labels=list(labels) if labels is not None else [s.run_name for s in specs],
                   overrides=list(overrides) if overrides is not None else [[] for _ in specs],
                   prestarted=prestarted)


Extra = Callable[[RunSpec], List[str]]


def problems(req: Request, *, notes: bool = True, extra: Optional[Extra] = None) -> List[str]:
    """Every problem, one line each: the cluster's commands, then for every point the schema, the generic checks
    (files, data, devices, the run_dir's state), the backend's ``check`` and its ``check_launch`` of the launcher
    settings, then ``extra`` (a door's own rule, such as a study's objective). ``notes``: print the data warnings
    when the checks before ``extra`` find no problem. The run_dirs' states it read are kept in ``req.states``."""
    from launcher.core.errors import ConfigError
    from launcher.preflight import check_points
    from launcher.submit import check_cluster_commands

    try:
        check_cluster_commands(req.params)
        found: List[str] = []
    except ConfigError as e:
        found = [str(e)]
    points, req.states = check_points(req.specs, req.labels, cluster=req.params.cluster,
                                      gpus_per_node=req.params.gpus_per_node, notes=notes and not found,
                                      params=req.params)
    found += points
    if extra is not None:
        many = len(req.specs) > 1
        found += [f"[{label}] {p}" if many else p for spec, label in zip(req.specs, req.labels) for p in extra(spec)]
    return list(dict.fromkeys(found))


def preflight(req: Request, *, notes: bool = True, extra: Optional[Extra] = None) -> None:
    """Raise every problem of every point together (ConfigErrors: exit 2) before anything runs or is written."""
    found = problems(req, notes=notes, extra=extra)
    if found:
        raise ConfigErrors(found)


def dispatch(req: Request, *, guarded: bool = False, **submit: Any) -> Optional[Any]:
    """A dry run prints what would run and returns None; otherwise the points run here or go out through submitit
    (:func:`launcher.submit.dispatch_runs`, ``submit``: its keywords) and the SweepResult is returned.
    ``guarded``: whatever escapes a single run ends as one line naming its run_dir (the single-run doors)."""
    from launcher.submit import dispatch_runs

    if req.dry_run:
        from launcher.preflight import print_dry_run

        print_dry_run(req.specs, req.labels, states=req.states or None)
        return None
    submit.setdefault("wait", req.params.wait)

    def go() -> Any:
        return dispatch_runs(req.specs, req.params, req.sweep_dir, overrides=req.overrides,
                             prestarted=req.prestarted, states=req.states or None, **submit)

    if not guarded:
        return go()
    from launcher.reporting import guarded_submit

    return guarded_submit(req.specs, go)


def launch(req: Request, *, guarded: bool = False, **submit: Any) -> Optional[Any]:
    """``preflight`` then ``dispatch``: what every door but a study's trials does with its request."""
    preflight(req)
    return dispatch(req, guarded=guarded, **submit)
