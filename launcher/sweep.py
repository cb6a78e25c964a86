"""Hydra multirun: compose every sweep point, preflight them all, then hand them to submission."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence, Tuple

from launcher.errors import ConfigErrors
from launcher.schema import RunSpec


def launcher_params(hydra_launcher_cfg: Any) -> "Any":
    """The composed ``hydra.launcher`` node -> LauncherParams (unknown keys are refused by Hydra)."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from launcher.submit import LauncherParams

    raw = OmegaConf.to_container(hydra_launcher_cfg, resolve=True) if hydra_launcher_cfg is not None else {}
    names = {f.name for f in fields(LauncherParams)}
    return LauncherParams(**{k: v for k, v in (raw or {}).items() if k in names})


def compose_points(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
                   ) -> Tuple[List[RunSpec], List[List[str]], Path]:
    """One RunSpec per sweep point; run_dir defaults to SWEEP_DIR/<job number>."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from launcher.translate import spec_from_hydra_cfg

    cfg = launcher.config
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    specs: List[RunSpec] = []
    overrides: List[List[str]] = []
    for i, ov in enumerate(job_overrides):
        idx = initial_job_idx + i
        point = launcher.hydra_context.config_loader.load_sweep_config(cfg, list(ov))
        with open_dict(point):
            point.hydra.job.id = f"job{idx}"
            point.hydra.job.num = idx
        HydraConfig.instance().set_config(point)
        if point.get("run_dir") in (None, ""):
            with open_dict(point):
                point.run_dir = str(sweep_dir / str(point.hydra.sweep.subdir))
        specs.append(spec_from_hydra_cfg(point, base_dir=Path(os.getcwd())))
        overrides.append(list(ov))
    HydraConfig.instance().set_config(cfg)
    return specs, overrides, sweep_dir


def launch_sweep(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    from hydra.core.utils import JobReturn, JobStatus

    from launcher.preflight import check_sweep, print_dry_run
    from launcher.submit import submit_runs

    specs, overrides, sweep_dir = compose_points(launcher, job_overrides, initial_job_idx)
    params = launcher_params(launcher.config.hydra.launcher)
    labels = [f"{initial_job_idx + i}: {' '.join(ov) or '(no overrides)'}" for i, ov in enumerate(overrides)]
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


class SweepFailed(RuntimeError):
    """Some points of a sweep failed (the others finished); the summary lists them."""


def _job_return(overrides: List[str], status: Any, value: Any) -> Any:
    from hydra.core.utils import JobReturn

    ret = JobReturn()
    ret.overrides = list(overrides)
    ret.status = status
    ret._return_value = value
    return ret
