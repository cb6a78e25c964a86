"""Submission: the one module that sends validated RunSpecs to where they run.

``inprocess`` runs them one after the other in this process; ``local`` and ``slurm`` go through submitit, a
sweep being one job array (split only where it exceeds the cluster's MaxArraySize). Every submitted job is
:class:`RunJob`: it calls :func:`launcher.job.run_job`, which resumes an unfinished run directory, so a requeued
or preempted job simply runs the same call again. ``SWEEP_DIR/sweep.json`` records what was submitted;
``launch-status SWEEP_DIR`` reads it later. submitit is imported only when jobs are submitted (~0.4 s).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from launcher.core.errors import EXIT_PREEMPTED, ConfigError, ConfigErrors
from launcher.core.layout import RunLayout
from launcher.core.schema import TRAINING_TASKS, RunSpec
from launcher.params import LauncherParams

CLUSTERS = ("inprocess", "local", "slurm")
SWEEP_RECORD = "sweep.json"
RESULT_GRACE_S = 30.0  # how long a COMPLETED job may lack its result file before it counts as failed

# summary states: a finished job, or where an unfinished one stands
DONE_OK = ("FINISHED", "SKIPPED")
NOT_OK = ("FAILED", "CANCELLED", "TIMEOUT")
ACTIVE = ("PENDING", "RUNNING", "PREEMPTED")


@dataclass
class JobOutcome:
    index: int
    run_dir: str
    state: str                          # FINISHED | SKIPPED | PREEMPTED | FAILED | CANCELLED | TIMEOUT | PENDING | RUNNING
    overrides: List[str]
    error: Optional[str] = None
    wall_s: Optional[float] = None
    job_id: Optional[str] = None
    log_path: Optional[str] = None
    cluster_state: Optional[str] = None  # SLURM's own state (sacct), where there is one
    objective: Optional[float] = None    # an Optuna trial's reported eval.objective (finished trials only)


@dataclass
class SweepResult:
    sweep_dir: Path
    outcomes: List[JobOutcome]
    array_ids: List[str] = field(default_factory=list)
    summary_path: Optional[Path] = None

    @property
    def failed(self) -> List[JobOutcome]:
        return [o for o in self.outcomes if o.state in NOT_OK]

    @property
    def pending(self) -> List[JobOutcome]:
        return [o for o in self.outcomes if o.state in ACTIVE]


@dataclass
class Earlier:
    """What an Optuna study's earlier batches ran (each batch is one submission): ``sweep.json`` keeps their
    jobs with each new batch's, so ``launch-status`` sees the whole study; the study writes the summary."""

    outcomes: List[JobOutcome] = field(default_factory=list)
    array_ids: List[str] = field(default_factory=list)
    objective: str = "val_loss"
    ran: int = 0          # trials that ran or were submitted (not refused by preflight)


# ---------------------------------------------------------------------------------------------
# The submitted callable
# ---------------------------------------------------------------------------------------------

class RunJob:
    """The picklable callable every submitit job runs: ``RunJob()(spec)`` -> a small result dict.

    It follows submitit's ``helpers.Checkpointable`` protocol (``checkpoint()`` returns a
    ``DelayedSubmission`` of the same call, so a preempted or timed-out job is requeued with the
    same spec, and ``run_job`` resumes it from its checkpoint). It does not subclass it, so that
    importing this module does not import submitit.

    A training that raises propagates its exception: submitit records the traceback and the job
    ends FAILED in SLURM. A training stopped by a signal (the trainer checkpointed and raised
    ``Preempted``) exits without a result, so the submitter never mistakes it for a finished job.

    With several tasks (``tasks_per_node`` x ``nodes``) every task runs this call as one rank of one
    training (:func:`launcher.worker.run_rank`): rank 0 owns the run directory and its result is the
    job's (``%j_0_result.pkl``); the other ranks return theirs quietly, also when preempted, so that
    their exit never cuts short rank 0's checkpoint and requeue.
    """

    def __call__(self, spec: RunSpec) -> Dict[str, Any]:
        from launcher.worker import rank_and_world, run_rank

        t0 = time.time()
        rank, world = rank_and_world()
        res = run_rank(spec)
        if res.status == "preempted" and rank == 0:
            raise SystemExit(EXIT_PREEMPTED)
        return {"status": res.status, "run_dir": res.run_dir, "result": res.result,
                "message": res.message, "wall_s": time.time() - t0, "rank": rank, "world": world}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Parameters -> submitit
# ---------------------------------------------------------------------------------------------

_COMMON = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
           "stderr_to_stdout")
_SLURM_ONLY = ("partition", "qos", "comment", "constraint", "exclude", "account", "gres", "cpus_per_gpu",
               "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "array_parallelism", "signal_delay_s", "setup",
               "srun_args", "additional_parameters")


def check_params(params: LauncherParams) -> None:
    """One-line errors for launcher settings submitit would otherwise reject with a traceback."""
    if params.cluster not in CLUSTERS:
        raise ConfigError(f"hydra.launcher.cluster: '{params.cluster}' is not one of {', '.join(CLUSTERS)}",
                          key="cluster")
    for key in ("timeout_min", "tasks_per_node", "nodes", "array_parallelism"):
        if getattr(params, key) is None or getattr(params, key) < 1:
            raise ConfigError(f"hydra.launcher.{key}: must be >= 1, got {getattr(params, key)}", key=key)
    if params.max_num_timeout < 0:
        raise ConfigError(f"hydra.launcher.max_num_timeout: must be >= 0, got {params.max_num_timeout}",
                          key="max_num_timeout")
    if params.cluster == "inprocess" and (params.tasks_per_node > 1 or params.nodes > 1):
        key = "tasks_per_node" if params.tasks_per_node > 1 else "nodes"
        raise ConfigError(f"hydra.launcher.{key}: the in-process launcher runs one process, got "
                          f"{getattr(params, key)}; use hydra/launcher=local (one node) or slurm for several ranks",
                          key=key)
    if params.gpus_per_node and params.tasks_per_node > params.gpus_per_node:
        raise ConfigError(f"hydra.launcher.gpus_per_node: {params.gpus_per_node} GPU(s) for {params.tasks_per_node} "
                          "tasks per node; each rank needs its own GPU (set gpus_per_node = tasks_per_node)",
                          key="gpus_per_node")
    if params.cluster == "local" and params.nodes != 1:
        raise ConfigError(f"hydra.launcher.nodes: the local launcher runs on one node, got {params.nodes}",
                          key="nodes")
    if params.cluster == "slurm" and params.setup is not None and not isinstance(params.setup, (list, tuple)):
        raise ConfigError("hydra.launcher.setup: expected a list of shell lines", key="setup")


def backend_launch_problems(specs: Sequence[RunSpec], params: LauncherParams) -> List[str]:
    """Launcher settings a run's backend cannot honour (its ``check_launch(spec, params)``), one line
    each, prefixed with the run's name when there are several runs."""
    from launcher.backends import REGISTRY, get_backend

    problems: List[str] = []
    for spec in specs:
        if spec.backend not in REGISTRY:
            continue
        for p in get_backend(spec.backend).check_launch(spec, params):
            line = f"[{spec.run_name}] {p}" if len(specs) > 1 else p
            if line not in problems:
                problems.append(line)
    return problems


def executor_parameters(params: LauncherParams) -> Dict[str, Any]:
    """LauncherParams -> ``AutoExecutor.update_parameters`` keywords (unset values left out)."""
    out: Dict[str, Any] = {k: getattr(params, k) for k in _COMMON if getattr(params, k) is not None}
    if params.cluster == "slurm":
        for k in _SLURM_ONLY:
            v = getattr(params, k)
            if v is not None and v != {} and v != []:
                out[f"slurm_{k}"] = list(v) if isinstance(v, tuple) else v
        srun = list(out.get("slurm_srun_args") or [])
        if params.tasks_per_node * params.nodes > 1 and not any(
                a.startswith(("--kill-on-bad-exit", "-K")) for a in map(str, srun)):
            # one training of N ranks: a rank that fails ends the step instead of leaving the others
            # blocked in a collective until torch.distributed's timeout
            out["slurm_srun_args"] = srun + ["--kill-on-bad-exit=1"]
    elif params.cluster == "local":
        if params.setup:
            out["local_setup"] = list(params.setup)
    return out


def submitit_folder(params: LauncherParams, sweep_dir: Path) -> Path:
    folder = params.submitit_folder
    if not folder or "${" in str(folder):
        return Path(sweep_dir) / ".submitit" / "%j"
    return Path(folder)


def make_executor(params: LauncherParams, sweep_dir: Path) -> Any:
    import submitit

    ex = submitit.AutoExecutor(folder=submitit_folder(params, sweep_dir), cluster=params.cluster,
                               **{f"{params.cluster}_max_num_timeout": params.max_num_timeout})
    ex.update_parameters(**executor_parameters(params))
    return ex


def max_array_size(default: int = 1001) -> int:
    """The cluster's MaxArraySize (array indices must stay below it)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return default
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            try:
                return max(1, int(value.strip()))
            except ValueError:
                return default
    return default


def chunks(n: int, size: int) -> List[range]:
    """Index ranges of at most ``size`` items covering ``range(n)``."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------------------------------------
# The sweep record (what launch-status reads)
# ---------------------------------------------------------------------------------------------

def _record_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / SWEEP_RECORD


def write_record(sweep_dir: Path, params: LauncherParams, folder: Path, outcomes: Sequence[JobOutcome],
                 array_ids: Sequence[str], objective: Optional[str] = None) -> Path:
    """Write sweep.json. ``objective`` (an Optuna study's eval.objective) makes the summary rank the jobs, also
    when ``launch-status`` rewrites it."""
    from launcher.core.atomic import atomic_write_json

    path = _record_path(sweep_dir)
    rec = {"cluster": params.cluster, "submitit_folder": str(folder), "array_ids": list(array_ids),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "params": asdict(params),
           "jobs": [asdict(o) for o in outcomes]}
    if objective:
        rec["objective"] = objective
    atomic_write_json(path, rec)
    return path


def read_record(sweep_dir: Path) -> Dict[str, Any]:
    path = _record_path(sweep_dir)
    from launcher.core.layout import read_json_file

    rec = read_json_file(path, key="SWEEP_DIR",
                         missing_hint=f" (is {sweep_dir} a sweep directory made by a submitit launcher?)")
    if not isinstance(rec, dict) or "jobs" not in rec or "cluster" not in rec:
        raise ConfigError(f"{path}: not a sweep record (needs 'cluster' and 'jobs')")
    return rec


# ---------------------------------------------------------------------------------------------
# Job states
# ---------------------------------------------------------------------------------------------

def _error_line(trace: str) -> str:
    lines = [ln.strip() for ln in str(trace).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def _map_cluster_state(state: str) -> str:
    s = (state or "UNKNOWN").upper().split()[0]
    if s in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "UNKNOWN",
             "READY", "CONFIGURING"):
        return "PENDING"
    if s in ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"):
        return "RUNNING"
    if s == "PREEMPTED":
        return "PREEMPTED"
    if s.startswith("CANCELLED"):
        return "CANCELLED"
    if s in ("TIMEOUT", "DEADLINE"):
        return "TIMEOUT"
    return "FAILED"  # FAILED, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL, and COMPLETED without a result


def _process_alive(pid: int) -> bool:
    """Alive and not a zombie (a reaped-late controller keeps its /proc entry)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def outcome_of(job: Any, base: JobOutcome, cluster: str, cluster_state: Optional[str] = None) -> JobOutcome:
    """Where one submitted job stands: its result pickle first, then the cluster's state."""
    from submitit.core import utils as su

    o = JobOutcome(**asdict(base))
    o.job_id = str(job.job_id)
    stderr = job.paths.stderr
    o.log_path = str(job.paths.stdout if not stderr.exists() and job.paths.stdout.exists() else stderr)
    o.cluster_state = cluster_state
    if job.paths.result_pickle.exists():
        try:
            kind, value = su.pickle_load(job.paths.result_pickle)
        except Exception as e:  # noqa: BLE001 - a torn pickle after a hard kill
            kind, value = "error", f"unreadable result file {job.paths.result_pickle}: {e}"
        if kind == "success" and isinstance(value, dict):
            o.state = {"finished": "FINISHED", "skipped": "SKIPPED"}.get(value.get("status"), "FINISHED")
            o.wall_s = value.get("wall_s")
            o.error = None
        else:
            o.state, o.error = "FAILED", _error_line(value)
            o.wall_s = RunLayout.of(o.run_dir).read_state().get("wall_s")
        return o
    if cluster == "local":
        alive = _process_alive(int(job.job_id))
        o.state = "RUNNING" if alive else "FAILED"
        o.cluster_state = "RUNNING" if alive else "EXITED"
    else:
        o.state = _map_cluster_state(cluster_state or "UNKNOWN")
    if o.state in NOT_OK:
        st = RunLayout.of(o.run_dir).read_state()
        o.wall_s = st.get("wall_s")
        o.error = st.get("error") or f"job ended {o.cluster_state or o.state} without a result (see {o.log_path})"
    return o


def slurm_states(job_ids: Sequence[str]) -> Dict[str, str]:
    """``JOBID[_TASK]`` -> SLURM state, one ``sacct`` call for all (submitit's own parser)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    arrays = sorted({str(j).split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    for a in arrays:
        cmd += ["-j", a]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = SlurmInfoWatcher().read_info(out)
    return {str(j): info.get(str(j), {}).get("State", "UNKNOWN") for j in job_ids}


def job_handles(record: Dict[str, Any]) -> List[Any]:
    """submitit Job objects for the jobs of a sweep record (no process handles: state from files/sacct)."""
    from submitit.local.local import LocalJob
    from submitit.slurm.slurm import SlurmJob

    folder = Path(record["submitit_folder"])
    cls = SlurmJob if record["cluster"] == "slurm" else LocalJob
    return [cls(folder=folder, job_id=str(j["job_id"]), tasks=[0]) for j in record["jobs"]]


def outcomes_of(jobs: Sequence[Any], bases: Sequence[JobOutcome], cluster: str) -> List[JobOutcome]:
    states = slurm_states([str(j.job_id) for j in jobs]) if cluster == "slurm" else {}
    return [outcome_of(j, b, cluster, states.get(str(j.job_id))) for j, b in zip(jobs, bases)]


# ---------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------

def _echo_best(run_dir: str, echo: Callable[[str], None]) -> None:
    """A finished training's best validation metrics, with units (the sweep summary has every run's)."""
    from launcher.reporting import best_line

    line = best_line(run_dir)
    if line:
        echo(line)


def _run_inprocess(specs: Sequence[RunSpec], overrides: List[List[str]], echo: Callable[[str], None],
                   prestarted: Optional[Any] = None, indices: Optional[Sequence[int]] = None,
                   study: bool = False, states: Optional[Sequence[Optional[str]]] = None) -> List[JobOutcome]:
    """Run each spec here; a single run's error propagates, except in a study (its trial is then failed).
    A single run takes its ``prestarted`` handle and its run_dir's state as preflight read it (``states``)."""
    from launcher.job import run_job

    outcomes: List[JobOutcome] = []
    indices = list(indices) if indices is not None else list(range(len(specs)))
    for i, spec, ov in zip(indices, specs, overrides):
        t0 = time.time()
        log = str(RunLayout.of(spec.run_dir or ".").train_log)
        try:
            one = len(specs) == 1
            res = run_job(spec, echo=echo, prestarted=prestarted if one else None,
                          state=states[0] if one and states else None)
            state = {"finished": "FINISHED", "skipped": "SKIPPED", "preempted": "PREEMPTED"}[res.status]
            if res.status == "finished" and spec.task in TRAINING_TASKS:
                _echo_best(res.run_dir, echo)
            outcomes.append(JobOutcome(i, spec.run_dir or "", state, ov, wall_s=time.time() - t0, log_path=log))
        except Exception as e:  # one failing point does not stop the others
            outcomes.append(JobOutcome(i, spec.run_dir or "", "FAILED", ov,
                                       error=f"{type(e).__name__}: {e}", wall_s=time.time() - t0, log_path=log))
            if len(specs) == 1 and not study:
                raise
            if study:
                echo(f"error: trial {i} FAILED: {type(e).__name__}: {e}")
    return outcomes


def check_cluster_commands(params: LauncherParams) -> None:
    """The cluster's commands are here (part of preflight, so that a dry run gets the launch's verdict)."""
    if params.cluster == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("hydra.launcher.cluster: slurm needs the SLURM commands (sbatch not found on PATH)",
                          key="cluster")


def _first_missing(folder: Path) -> Optional[Path]:
    """The highest folder of ``folder``'s path that does not exist yet (what ``mkdir -p`` would create first)."""
    missing = None
    for p in [folder, *folder.parents]:
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


def _submit(specs: Sequence[RunSpec], params: LauncherParams, sweep_dir: Path) -> tuple:
    """Submit every spec; a sweep is one job array (several where it exceeds MaxArraySize)."""
    from submitit.core.utils import FailedJobError

    ex = make_executor(params, sweep_dir)
    size = max_array_size() if params.cluster == "slurm" else max(1, len(specs))
    jobs: List[Any] = []
    array_ids: List[str] = []
    fn = RunJob()
    for part in chunks(len(specs), size):
        try:
            with ex.batch():
                part_jobs = [ex.submit(fn, specs[i]) for i in part]
        except FailedJobError as e:  # sbatch refused (bad partition, account, limits): nothing was queued
            for a in array_ids:  # all or nothing: withdraw the arrays already queued
                subprocess.run(["scancel", a], capture_output=True, timeout=60)
            reason = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
            raise ConfigError(f"hydra.launcher: the cluster refused the jobs: {reason}") from None
        jobs.extend(part_jobs)
        if part_jobs:
            array_ids.append(str(part_jobs[0].job_id).split("_")[0])
    return jobs, array_ids


def wait_for(jobs: Sequence[Any], bases: Sequence[JobOutcome], params: LauncherParams,
             on_change: Optional[Callable[[List[JobOutcome]], None]] = None) -> List[JobOutcome]:
    """Poll until every job is done: result files every second, the cluster every poll_interval_s."""
    from tqdm import tqdm

    cluster = params.cluster
    done = [False] * len(jobs)
    outcomes = [JobOutcome(**asdict(b)) for b in bases]
    last_poll = 0.0
    completed_since: Dict[int, float] = {}
    with tqdm(total=len(jobs), desc="jobs done", unit="job", disable=None, file=sys.stderr) as bar:
        while not all(done):
            states: Dict[str, str] = {}
            now = time.time()
            if cluster == "slurm" and now - last_poll >= params.poll_interval_s:
                states = slurm_states([str(j.job_id) for j, d in zip(jobs, done) if not d])
                last_poll = now
            changed = False
            for i, job in enumerate(jobs):
                if done[i]:
                    continue
                finished = job.paths.result_pickle.exists()
                if not finished and cluster == "local":
                    finished = not _process_alive(int(job.job_id))
                state = states.get(str(job.job_id))
                if not finished and state and state.upper().startswith("COMPLETED"):
                    # ended cleanly but its result file is not visible yet (a slow shared filesystem)
                    finished = time.time() - completed_since.setdefault(i, time.time()) > RESULT_GRACE_S
                elif not finished and state:
                    finished = _map_cluster_state(state) in NOT_OK
                if finished:
                    outcomes[i] = outcome_of(job, bases[i], cluster, states.get(str(job.job_id)))
                    done[i] = True
                    changed = True
                    bar.update(1)
            if changed and on_change:
                on_change(outcomes)
            if not all(done):
                time.sleep(1.0)
    if cluster == "slurm":  # SLURM's final state of every job, for the summary (it lags the result files)
        deadline = time.time() + 15
        while True:
            states = slurm_states([str(j.job_id) for j in jobs])
            if time.time() > deadline or all(_map_cluster_state(s) not in ACTIVE for s in states.values()):
                break
            time.sleep(1.0)
        for o in outcomes:
            o.cluster_state = states.get(str(o.job_id), o.cluster_state)
    return outcomes


def counts_line(outcomes: Sequence[JobOutcome]) -> str:
    """One line of counts, e.g. ``3 run(s): 1 FAILED, 2 FINISHED``."""
    counts: Dict[str, int] = {}
    for o in outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    return f"{len(outcomes)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def submit_runs(specs: List[RunSpec], params: LauncherParams, sweep_dir: Path, **kwargs: Any) -> SweepResult:
    """:func:`dispatch_runs` for a caller that did not preflight ``params``: refuses what a door's preflight
    refuses of them (:func:`check_params`, the backends' ``check_launch``) first."""
    check_params(params)
    problems = backend_launch_problems(specs, params)
    if problems:
        raise ConfigErrors(problems)
    return dispatch_runs(specs, params, sweep_dir, **kwargs)


def dispatch_runs(specs: List[RunSpec], params: LauncherParams, sweep_dir: Path, *,
                  overrides: Optional[List[List[str]]] = None, wait: bool = True, echo: Callable[[str], None] = print,
                  prestarted: Optional[Any] = None, indices: Optional[Sequence[int]] = None,
                  earlier: Optional[Earlier] = None, states: Optional[Sequence[Optional[str]]] = None) -> SweepResult:
    """Run or submit every spec (already validated and preflighted: :mod:`launcher.pipeline`).

    ``inprocess`` runs them here, one after the other. ``local`` / ``slurm`` submit them through submitit as
    one job array; with ``wait`` the call returns when all are done, otherwise at once (``launch-status
    SWEEP_DIR`` reports later). A sweep of several runs writes ``SWEEP_DIR/summary.csv``, ``.md`` and ``.png``.
    ``prestarted`` (a backend's early start, ``trainers.api``) and ``states`` (preflight's run_dir states) go
    to the job of a single in-process run.

    One batch of an Optuna study passes ``earlier`` (the study so far) and ``indices`` (its job numbers):
    sweep.json lists the whole study, a failed trial never raises, and the study writes the summary once it
    has the trials' objectives.
    """
    from launcher import summary

    sweep_dir = Path(sweep_dir).resolve()
    overrides = overrides or [[] for _ in specs]
    if params.cluster == "inprocess":
        outcomes = _run_inprocess(specs, overrides, echo, prestarted, indices, study=earlier is not None,
                                  states=states)
        result = SweepResult(sweep_dir, outcomes)
    else:
        numbers = list(indices) if indices is not None else list(range(len(specs)))
        bases = [JobOutcome(i, s.run_dir or "", "PENDING", list(ov)) for i, s, ov in zip(numbers, specs, overrides)]
        result = _submit_and_wait(specs, params, sweep_dir, bases, earlier or Earlier(objective=""), wait, echo)
        if not wait:
            return result
        single = earlier is None and len(specs) == 1
        if single and result.outcomes[0].state == "FINISHED" and specs[0].task in TRAINING_TASKS:
            _echo_best(result.outcomes[0].run_dir, echo)
        echo(counts_line(result.outcomes))
        for o in result.failed:
            echo(f"  [{o.index}] {o.state}: {o.error} (log {o.log_path})")
    if len(specs) > 1 and earlier is None:
        result.summary_path = summary.write_summary(sweep_dir, result.outcomes)["csv"]
        echo(f"sweep summary: {result.summary_path}")
    return result


def _submit_and_wait(specs: Sequence[RunSpec], params: LauncherParams, sweep_dir: Path, bases: List[JobOutcome],
                     before: Earlier, wait: bool, echo: Callable[[str], None]) -> SweepResult:
    """Submit through submitit, record sweep.json (with a study's earlier batches) and, with ``wait``, follow the
    jobs to their end; a refused submission removes the sweep folder it made."""
    check_cluster_commands(params)  # before the sweep folder exists: a refused submission leaves none
    first_new = _first_missing(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        jobs, array_ids = _submit(specs, params, sweep_dir)
    except ConfigError:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        raise
    folder = submitit_folder(params, sweep_dir)
    for b, j in zip(bases, jobs):
        b.job_id = str(j.job_id)
        b.log_path = str(j.paths.stderr)

    def record(outcomes: List[JobOutcome]) -> None:
        write_record(sweep_dir, params, folder, [*before.outcomes, *outcomes], [*before.array_ids, *array_ids],
                     before.objective or None)

    record(bases)
    what = "job array" if len(array_ids) == 1 and len(specs) > 1 else "job"
    ranks = params.tasks_per_node * params.nodes
    each = f" ({ranks} ranks each: {params.nodes} node(s) x {params.tasks_per_node} task(s))" if ranks > 1 else ""
    echo(f"submitted {len(specs)} run(s) to {params.cluster} as {what}{'s' if len(array_ids) > 1 else ''} "
         f"{', '.join(array_ids)}{each} in {time.time() - t0:.1f}s; logs under {folder.parent}")
    result = SweepResult(sweep_dir, bases, array_ids)
    if not wait:
        echo(f"not waiting: `launch-status {sweep_dir}` reports states and writes {sweep_dir / 'summary.csv'}")
        return result
    try:
        result.outcomes = wait_for(jobs, bases, params, on_change=record)
    except KeyboardInterrupt:
        echo(f"stopped waiting; the jobs keep running: `launch-status {sweep_dir}` reports on them")
        raise
    record(result.outcomes)
    return result
