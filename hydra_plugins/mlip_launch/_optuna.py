"""``hydra/sweeper=optuna``: hydra-optuna-sweeper's study, run through our launchers.

Differs from the plugin's own loop in what a training tool needs: the search space and every sampled key
at its bounds / choices pass preflight before any trial is queued (bad input: one line, exit 2, nothing
written); a failed trial is told to Optuna as ``TrialState.FAIL`` (never a made-up number) and the study
goes on; the study minimises ``eval.objective`` (one source of truth: every objective is an error);
``optimization_results.yaml``, ``multirun.yaml`` and the ranked summary land in the sweep dir.

The leading underscore keeps Hydra's plugin scan from importing this module (and optuna) at start-up;
:class:`hydra_plugins.mlip_launch.launcher.MlipOptunaSweeper` imports it when a study starts.
"""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import optuna
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides

log = logging.getLogger(__name__)
PREEMPTED_STOP = "a trial was stopped by a signal; its checkpoint is kept"


class MlipOptunaSweeperImpl(OptunaSweeperImpl):
    """The plugin's sweeper with our checks, failure handling and outputs (see the module docstring)."""

    launcher_outcomes: List[Any] = []  # every trial's JobOutcome, once the study has ended
    bad_failure_rate: Optional[Any] = None  # a max_failure_rate outside [0, 1], refused when the study starts

    def settings_problems(self) -> List[str]:
        """Sweeper settings we refuse, one line each."""
        problems = []
        if self.bad_failure_rate is not None:
            problems.append(f"hydra.sweeper.max_failure_rate: must be in [0, 1], got {self.bad_failure_rate}")
        directions = self._get_directions()
        if directions != ["minimize"]:
            problems.append(f"hydra.sweeper.direction: {'/'.join(map(str, directions))}: the study minimises "
                            "eval.objective (every objective is an error, lower is better); leave it at minimize")
        if self.storage:
            import sqlalchemy

            if int(sqlalchemy.__version__.split(".")[0]) >= 2:
                problems.append(f"hydra.sweeper.storage: optuna {optuna.__version__} (what hydra-optuna-sweeper "
                                f"allows) cannot open a database with SQLAlchemy {sqlalchemy.__version__}; leave it "
                                "null (the study lives in memory; SWEEP_DIR/optimization_results.yaml and "
                                "summary.csv keep its results)")
        for key in ("n_trials", "n_jobs"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                problems.append(f"hydra.sweeper.{key}: must be >= 1, got {getattr(self, key)}")
        return problems

    def sweep(self, arguments: List[str]) -> None:
        """Check the study (every sampled key at its bounds), then run it batch by batch through the launcher."""
        from launcher import pipeline

        distributions, fixed_params = self._space(arguments)
        from launcher.sweep import check_study

        fixed = [f"{k}={v}" for k, v in fixed_params.items()]
        req = check_study(self.launcher, fixed, distributions)  # exit 2 before anything is queued or written
        objective = req.specs[0].eval.objective
        space = ", ".join(f"{k}: {d}" for k, d in distributions.items())
        if req.dry_run:
            pipeline.dispatch(req)
            print(f"dry run: an Optuna study of {self.n_trials} trial(s), {self.n_jobs} per batch, minimising "
                  f"{objective} over {space}; nothing was run")
            return
        is_grid = isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler
        if is_grid:
            grid = {k: self._to_grid_sampler_choices(d) for k, d in distributions.items()}
            self.sampler = self.sampler(grid)
            size = 1
            for v in grid.values():
                size *= len(v)
            self.n_trials = min(self.n_trials, size)

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what the study does
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    direction="minimize", load_if_exists=True)
        print(f"optuna: study {study.study_name}: {self.n_trials} trial(s), {self.n_jobs} per batch, "
              f"minimising {objective} over {space}")
        from launcher.submit import Earlier

        self.launcher.study = Earlier(objective=objective)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        failed: List[Any] = []
        stopped: Optional[str] = None
        try:
            stopped = self._run_batches(study, distributions, fixed_params, is_grid, failed)
        finally:
            self.launcher_outcomes = list(self.launcher.study.outcomes)
            self.launcher.study = None
            if sweep_dir.is_dir():  # written only once a trial has written there
                OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
                self._save_results(study, sweep_dir, objective, stopped)
        self._report(study, failed, stopped, objective, sweep_dir)

    def _space(self, arguments: List[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """(distributions, fixed params) of the study; the sweeper's own settings refused in one line each."""
        from launcher.core.errors import ConfigErrors

        assert self.config is not None and self.launcher is not None
        if not hasattr(self.launcher, "study"):  # only our launchers run a batch of trials as a study's
            raise ConfigErrors([f"hydra/launcher: the Optuna sweeper runs its trials through mlip-launch's launchers "
                                f"(inprocess, local, slurm, slurm_gpu), got {type(self.launcher).__name__}"])
        problems = self.settings_problems()
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        distributions, fixed_params = create_params_from_overrides(params_conf)
        if self.search_space_distributions:
            distributions = {**self.search_space_distributions, **distributions}
        for name in fixed_params:
            distributions.pop(name, None)
        if problems:  # the search space itself was checked before optuna was imported (launcher.study_space)
            raise ConfigErrors(problems)
        return distributions, fixed_params

    def _run_batches(self, study: Any, distributions: Dict[str, Any], fixed_params: Dict[str, Any], is_grid: bool,
                     failed: List[Any]) -> Optional[str]:
        """Ask, launch and tell, batch by batch; the failed trials' outcomes are added to ``failed``. Returns
        why the study stopped early (a trial stopped by a signal, too many failures), else None."""
        to_go = self.n_trials
        while to_go > 0:
            batch = min(to_go, self.n_jobs)
            trials = [study.ask() for _ in range(batch)]
            overrides = self._configure_trials(trials, distributions, fixed_params)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            n_failed = 0
            preempted = False
            for trial, ret, outcome in zip(trials, returns, self.launcher.study.outcomes[-len(returns):]):
                trial.set_user_attr("job", outcome.index)
                trial.set_user_attr("run_dir", outcome.run_dir)
                if ret.status == JobStatus.COMPLETED:
                    state, values = TrialState.COMPLETE, [float(ret._return_value)]
                else:
                    trial.set_user_attr("error", str(outcome.error))
                    state, values = TrialState.FAIL, None
                    failed.append(outcome)
                    n_failed += 1
                    preempted = preempted or outcome.state == "PREEMPTED"
                try:
                    study.tell(trial, values=values, state=state)
                except RuntimeError as e:  # the grid sampler stops the study once its grid is done
                    if not (is_grid and "Study.stop" in str(e)):
                        raise
            to_go -= batch
            if preempted:
                return PREEMPTED_STOP
            if n_failed / len(returns) > self.max_failure_rate:
                return (f"{n_failed} of {len(returns)} trials of the last batch failed, above "
                        f"hydra.sweeper.max_failure_rate={self.max_failure_rate}")
        return None

    def _report(self, study: Any, failed: List[Any], stopped: Optional[str], objective: str, sweep_dir: Path) -> None:
        """The study's closing lines: its best trial, then the stop or the failed trials (exit 143 or 1)."""
        from launcher.core.errors import EXIT_PREEMPTED
        from launcher.sweep import SweepFailed

        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if done:
            best = study.best_trial
            print(f"optuna: best trial {best.user_attrs.get('job', best.number)}: {objective} = {best.value:.6g} "
                  f"with {' '.join(f'{k}={v}' for k, v in best.params.items())}; "
                  f"{len(done)} complete, {len(failed)} failed; {sweep_dir / 'optimization_results.yaml'}")
        if stopped == PREEMPTED_STOP:
            print(f"error: optuna: study stopped: {stopped}", file=sys.stderr)
            sys.exit(EXIT_PREEMPTED)
        if failed:
            from launcher.summary import varying_overrides
            from launcher.sweep import failed_line

            everyone = self.launcher_outcomes
            varied = dict(zip(map(id, everyone), varying_overrides([o.overrides for o in everyone])))
            lines = [f"{len(failed)} of {len(study.trials)} trial(s) FAILED (told to Optuna as FAIL)"
                     + (f"; study stopped: {stopped}" if stopped else "") + ":"]
            lines += [failed_line(o, varied.get(id(o), o.overrides)) for o in failed]
            raise SweepFailed("\n".join(lines))

    def _save_results(self, study: Any, sweep_dir: Path, objective: str, stopped: Optional[str]) -> None:
        """``optimization_results.yaml``: the plugin's keys (name, best_params, best_value) plus the trial counts."""
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        best = study.best_trial if done else None
        results: Dict[str, Any] = {
            "name": "optuna",
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
            "objective": objective,
            "direction": "minimize",
            "best_job": best.user_attrs.get("job") if best else None,
            "n_complete": len(done),
            "n_failed": sum(t.state == TrialState.FAIL for t in study.trials),
        }
        if stopped:
            results["stopped"] = stopped
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("best parameters: %s", results["best_params"])
