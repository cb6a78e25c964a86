"""Hydra multirun: compose every sweep point, preflight them all, then hand them to submission.

An Optuna study (``hydra/sweeper=optuna``) goes through the same launcher one batch of trials at a time:
:func:`check_study` validates its search space before anything is queued, :func:`launch_trials` runs one
batch and reports each trial's ``eval.objective`` (or its failure) back to the sweeper.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from launcher.core.errors import ConfigErrors
from launcher.core.schema import RunSpec


def launcher_params(hydra_launcher_cfg: Any) -> "Any":
    """The composed ``hydra.launcher`` node -> LauncherParams (unknown keys are refused by Hydra)."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from launcher.params import LauncherParams

    raw = OmegaConf.to_container(hydra_launcher_cfg, resolve=True) if hydra_launcher_cfg is not None else {}
    names = {f.name for f in fields(LauncherParams)}
    return LauncherParams(**{k: v for k, v in (raw or {}).items() if k in names})


# config groups: overriding one of these needs a full composition (the fast path only sets keys)
_GROUPS = ("backend", "task", "data", "train", "eval", "experiment")


def _leaf_keys() -> Any:
    from launcher.core.schema import _leaf_types

    return _leaf_types().keys()


def _fast_updates(ov: Sequence[str], base_overrides: set, parser: Any) -> Optional[List[Tuple[str, Any]]]:
    """(key, value) pairs when a point differs from the base only by plain ``key=value`` changes."""
    changed = [o for o in ov if o not in base_overrides]
    updates = []
    for o in parser.parse_overrides(changed):
        key = o.key_or_group
        value = o.value()
        if (o.is_delete() or o.is_add() or o.is_force_add() or o.package or "/" in key
                or key.startswith("hydra") or key in _GROUPS or key not in _leaf_keys()
                or "${" in repr(value)):
            return None  # a group, a section or an interpolation: let Hydra compose it
        updates.append((key, value))
    return updates


def compose_points(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
                   ) -> Tuple[List[RunSpec], List[List[str]], Path]:
    """One RunSpec per sweep point; run_dir defaults to SWEEP_DIR/<job number>.

    Points that only change plain keys are derived from the already composed base config with
    OmegaConf updates (the structured schema still checks keys and types); points that switch a
    config group are composed by Hydra. This keeps a 256-point sweep to seconds.
    """
    import copy

    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    from launcher.core.schema import coerce_leaf, set_key
    from launcher.core.specio import resolve_paths
    from launcher.translate import spec_from_hydra_cfg

    cfg = launcher.config
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    parser = OverridesParser.create()
    base_overrides = set(cfg.hydra.overrides.task)
    hydra_node = OmegaConf.create({"hydra": copy.deepcopy(cfg.hydra)})
    OmegaConf.set_readonly(hydra_node.hydra, None)  # HydraConfig.set_config made it read-only (a study composes often)
    cwd = Path(os.getcwd())
    base_spec: Optional[RunSpec] = None
    specs: List[RunSpec] = []
    overrides: List[List[str]] = []
    for i, ov in enumerate(job_overrides):
        idx = initial_job_idx + i
        with open_dict(hydra_node):
            hydra_node.hydra.job.num = idx
            hydra_node.hydra.job.id = f"job{idx}"
        subdir = str(OmegaConf.select(hydra_node, "hydra.sweep.subdir"))
        updates = _fast_updates(ov, base_overrides, parser)
        if updates is None:
            point = launcher.hydra_context.config_loader.load_sweep_config(cfg, list(ov))
            with open_dict(point):
                point.hydra.job.num = idx
                point.hydra.job.id = f"job{idx}"
            HydraConfig.instance().set_config(point)
            spec = spec_from_hydra_cfg(point, base_dir=cwd)
        else:
            if base_spec is None:
                base_spec = spec_from_hydra_cfg(cfg, base_dir=cwd)
            spec = copy.deepcopy(base_spec)
            for key, value in updates:
                set_key(spec, key, coerce_leaf(key, value))
            spec = resolve_paths(spec, cwd)
        if not spec.run_dir:
            spec.run_dir = str((sweep_dir / subdir).absolute())
        specs.append(spec)
        overrides.append(list(ov))
    HydraConfig.instance().set_config(cfg)
    return specs, overrides, sweep_dir


def launch_sweep(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    from hydra.core.utils import JobStatus

    if getattr(launcher, "study", None) is not None:
        return launch_trials(launcher, job_overrides, initial_job_idx)

    from launcher import pipeline

    params = pipeline.checked_params(launcher_params(launcher.config.hydra.launcher))
    specs, overrides, sweep_dir = compose_points(launcher, job_overrides, initial_job_idx)
    req = pipeline.prepare(specs, params, sweep_dir, bases=[Path(os.getcwd())],
                           labels=point_labels(overrides, initial_job_idx), overrides=overrides)
    result = pipeline.launch(req)
    if result is None:  # a dry run
        return [_job_return(ov, JobStatus.COMPLETED, None) for ov in overrides]
    returns = []
    for o in result.outcomes:
        status = JobStatus.FAILED if o.state == "FAILED" else JobStatus.COMPLETED
        returns.append(_job_return(o.overrides, status, o))
    if result.failed:
        lines = [f"{len(result.failed)} of {len(result.outcomes)} runs FAILED:"]
        lines += [failed_line(o, o.overrides) for o in result.failed]
        raise SweepFailed("\n".join(lines))
    return returns


def failed_line(o: Any, overrides: List[str]) -> str:
    """One failed run of a sweep or study, as the closing error lists it."""
    return f"  [{o.index}] {' '.join(overrides)} -> {o.error} (run_dir {o.run_dir}, log {o.log_path})"


def point_labels(overrides: List[List[str]], first: int = 0) -> List[str]:
    """'N: k=v ...' with only the overrides that vary between points (the shared ones add noise)."""
    from launcher.summary import varying_overrides

    return [f"{first + i}: {' '.join(ov) or '(no overrides)'}"
            for i, ov in enumerate(varying_overrides(overrides))]


class SweepFailed(RuntimeError):
    """Some points of a sweep failed (the others finished); the summary lists them."""


def _job_return(overrides: List[str], status: Any, value: Any) -> Any:
    from hydra.core.utils import JobReturn

    ret = JobReturn()
    ret.overrides = list(overrides)
    ret.status = status
    ret._return_value = value
    return ret


# ---------------------------------------------------------------------------------------------
# Optuna studies (hydra/sweeper=optuna)
# ---------------------------------------------------------------------------------------------

class TrialFailed(RuntimeError):
    """A trial that has no objective to report: its run failed, preflight refused its sampled values, it
    recorded no ``eval.objective``, or it was stopped by a signal. ``outcome`` is its summary row."""

    def __init__(self, outcome: Any) -> None:
        super().__init__(f"trial {outcome.index} {outcome.state}: {outcome.error}")
        self.outcome = outcome


def objective_problems(spec: RunSpec) -> List[str]:
    """Why a run could not report ``eval.objective`` to a study (one line each; empty: it can)."""
    from launcher.backends import REGISTRY, get_backend
    from launcher.core.schema import CHOICES, EVAL_OBJECTIVES, TRAINING_TASKS

    name = spec.eval.objective
    if name not in CHOICES["eval.objective"]:
        return []  # validate() already names the key and its choices
    if spec.task in TRAINING_TASKS:
        allowed = get_backend(spec.backend).objectives if spec.backend in REGISTRY else None
        if allowed is not None and name not in allowed:
            expected = f"expected one of {', '.join(allowed)}" if allowed else "it records no objective"
            return [f"eval.objective: backend={spec.backend} does not record '{name}' when it trains; {expected}"]
        if not spec.data.val:
            return [f"eval.objective: {name} comes from the run's validation records; set data.val "
                    f"(a task={spec.task} run without it records no validation)"]
        return []
    if spec.task == "evaluate":
        if name not in EVAL_OBJECTIVES:
            return [f"eval.objective: task=evaluate records no '{name}' (eval/metrics.json); "
                    f"expected one of {', '.join(EVAL_OBJECTIVES)}"]
        return []
    return [f"eval.objective: task={spec.task} records no metric for an Optuna study to minimise "
            "(use task=train, finetune, resume or evaluate)"]


def probe_overrides(fixed: Sequence[str], distributions: Dict[str, Any]) -> List[Tuple[str, List[str]]]:
    """(label, overrides) of the points preflight checks before a study starts: each sampled key at its
    bounds or at each of its choices, the other keys as composed."""
    from optuna.distributions import CategoricalDistribution

    probes: List[Tuple[str, List[str]]] = []
    for key, dist in distributions.items():
        values = list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]
        for v in dict.fromkeys(values):
            probes.append((f"{key}={v}", [*fixed, f"{key}={v}"]))
    return probes


def check_study(launcher: Any, fixed: Sequence[str], distributions: Dict[str, Any]) -> Any:
    """Preflight of an Optuna study before any trial is queued or anything written: the fixed point, then every
    sampled key at its bounds / choices (each with the rest fixed). Problems raise ConfigErrors (exit 2).
    Returns the fixed point's :class:`launcher.pipeline.Request` (what a dry run of the study shows)."""
    from launcher import pipeline

    params = pipeline.checked_params(launcher_params(launcher.config.hydra.launcher))
    if not params.wait:
        raise ConfigErrors(["hydra.launcher.wait: an Optuna study needs each batch's results before it samples "
                            "the next; leave wait=true"])
    cwd = [Path(os.getcwd())]
    specs, _, sweep_dir = compose_points(launcher, [list(fixed)], 0)
    req = pipeline.prepare(specs, params, sweep_dir, bases=cwd, labels=["fixed keys of every trial"])
    pipeline.preflight(req, extra=objective_problems)
    probes = probe_overrides(fixed, distributions)
    if probes:
        specs, _, _ = compose_points(launcher, [ov for _, ov in probes], 1)
        probed = pipeline.prepare(specs, params, sweep_dir, bases=cwd, labels=[label for label, _ in probes])
        pipeline.preflight(probed, notes=False, extra=objective_problems)
    return req


def launch_trials(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """One batch of an Optuna study (``launcher.study``, a :class:`launcher.submit.Earlier`): every trial is
    preflighted, the valid ones run or go out as one job array, and each JobReturn's ``return_value`` is the
    trial's objective (:func:`launcher.summary.objective_value`). A trial that failed, whose sampled values
    preflight refused, or that recorded no objective returns FAILED (a :class:`TrialFailed`), never a number.
    The summary (ranked) and sweep.json cover the whole study so far."""
    from hydra.core.utils import JobStatus

    from launcher import pipeline
    from launcher.submit import submitit_folder, write_record
    from launcher.summary import write_summary

    study = launcher.study
    params = launcher_params(launcher.config.hydra.launcher)  # checked once, when the study started
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir)).resolve()
    outcomes, run = _preflight_trials(launcher, params, sweep_dir, job_overrides, initial_job_idx)
    array_ids: List[str] = []
    if run:
        req = pipeline.Request([s for _, s, _ in run], params, sweep_dir, overrides=[ov for _, _, ov in run])
        result = pipeline.dispatch(req, wait=True, indices=[i for i, _, _ in run], earlier=study)
        array_ids = list(result.array_ids)
        outcomes.update(_trial_outcomes(run, result.outcomes))
        study.ran += len(run)
    batch = [outcomes[initial_job_idx + i] for i in range(len(job_overrides))]
    study.outcomes.extend(batch)
    study.array_ids.extend(array_ids)
    if params.cluster != "inprocess" and study.ran:
        write_record(sweep_dir, params, submitit_folder(params, sweep_dir), study.outcomes, study.array_ids,
                     study.objective)
    if study.ran:  # the sweep dir is written once a job has written there, not for refused trials alone
        write_summary(sweep_dir, study.outcomes, study.objective)
    returns = []
    for o in batch:
        ok = o.state in ("FINISHED", "SKIPPED")
        returns.append(_job_return(o.overrides, JobStatus.COMPLETED if ok else JobStatus.FAILED,
                                   o.objective if ok else TrialFailed(o)))
    return returns


def _preflight_trials(launcher: Any, params: Any, sweep_dir: Path, job_overrides: Sequence[Sequence[str]],
                      first: int) -> Tuple[Dict[int, Any], List[Tuple[int, RunSpec, List[str]]]]:
    """Each trial of a batch through the pipeline's preflight: ({job number: FAILED outcome} of the refused
    ones, [(job number, spec, overrides)] of the ones to run). A refused trial fails; the study goes on."""
    from launcher import pipeline
    from launcher.reporting import config_error_message
    from launcher.submit import JobOutcome

    refused: Dict[int, Any] = {}
    run: List[Tuple[int, RunSpec, List[str]]] = []
    for i, ov in enumerate(job_overrides):
        idx = first + i
        spec = None
        try:
            (spec,), _, _ = compose_points(launcher, [list(ov)], idx)
            req = pipeline.prepare([spec], params, sweep_dir, bases=[Path(os.getcwd())], labels=[str(idx)])
            problems = pipeline.problems(req, notes=False, extra=objective_problems)
        except Exception as e:  # noqa: BLE001 - a point Hydra or the schema refused: this trial fails
            problems = config_error_message(e) or [f"{type(e).__name__}: {e}"]
        if problems:
            run_dir = spec.run_dir if spec is not None and spec.run_dir else str(sweep_dir / str(idx))
            refused[idx] = JobOutcome(idx, run_dir, "FAILED", list(ov), error="preflight: " + "; ".join(problems))
            print(f"error: trial {idx} ({' '.join(ov)}) refused by preflight: {'; '.join(problems)}")
        else:
            run.append((idx, spec, list(ov)))
    return refused, run


def _trial_outcomes(run: List[Tuple[int, RunSpec, List[str]]], outcomes: Sequence[Any]) -> Dict[int, Any]:
    """The outcomes of the trials that ran, each with its objective (a run that recorded none has FAILED)."""
    from launcher.summary import objective_value

    found: Dict[int, Any] = {}
    for (idx, spec, _), o in zip(run, outcomes):
        if o.state in ("FINISHED", "SKIPPED"):
            o.objective = objective_value(Path(o.run_dir), spec.eval.objective, spec.task)
            if o.objective is None:
                o.state, o.error = "FAILED", (f"eval.objective: the run recorded no finite "
                                              f"{spec.eval.objective} (see {o.log_path})")
        elif o.state == "PREEMPTED" and not o.error:
            o.error = "stopped by a signal (its checkpoint is kept)"
        found[idx] = o
    return found
