"""Hydra multirun: compose every sweep point, preflight them all, then hand them to submission."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

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

    from launcher.models import resolve_model_names
    from launcher.preflight import check_sweep, print_dry_run
    from launcher.submit import submit_runs

    specs, overrides, sweep_dir = compose_points(launcher, job_overrides, initial_job_idx)
    resolve_model_names(specs, [Path(os.getcwd())])  # model_in=NAME -> the verified cached file
    params = launcher_params(launcher.config.hydra.launcher)
    labels = point_labels(overrides, initial_job_idx)
    problems = check_sweep(specs, labels, cluster=params.cluster, gpus_per_node=params.gpus_per_node)
    if problems:
        raise ConfigErrors(problems)
    if any(s.dry_run for s in specs):
        print_dry_run(specs, labels)
        return [_job_return(ov, JobStatus.COMPLETED, None) for ov in overrides]
    result = submit_runs(specs, params, sweep_dir, overrides=overrides, wait=params.wait)
    returns = []
    for o in result.outcomes:
        status = JobStatus.FAILED if o.state == "FAILED" else JobStatus.COMPLETED
        returns.append(_job_return(o.overrides, status, o))
    if result.failed:
        lines = [f"{len(result.failed)} of {len(result.outcomes)} runs FAILED:"]
        lines += [f"  [{o.index}] {' '.join(o.overrides)} -> {o.error} (run_dir {o.run_dir}, log {o.log_path})"
                  for o in result.failed]
        raise SweepFailed("\n".join(lines))
    return returns


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
