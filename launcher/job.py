"""Job entry: the run-directory state machine, then the backend.

State of ``run_dir`` against the spec being launched:

- fresh (absent or empty)          -> run
- same spec, unfinished            -> resume (what makes SLURM requeue and preemption safe)
- same spec, finished              -> skip with a message
- different spec                   -> error, unless ``overwrite=true`` (old run moved aside, never deleted)
- not a run directory (other files)-> error, unless ``overwrite=true``

``evaluate`` / ``infer`` / ``export`` may target the directory of a finished training run: they
add their outputs (``eval/``, ``artifacts/``) and record their spec as ``run.<task>.yaml``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from launcher.core.atomic import atomic_write_text
from launcher.core.env import set_thread_defaults
from launcher.core.errors import ConfigError
from launcher.core.layout import RunLayout
from launcher.core.schema import TRAINING_TASKS, RunSpec

FRESH, RESUME, SKIP, DIFFERENT, FOREIGN, ADD = "fresh", "resume", "skip", "different", "foreign", "add"


@dataclass
class JobResult:
    run_dir: str
    status: str                     # finished | skipped | preempted | failed
    result: Dict[str, Any]
    message: str = ""


def _identity_without_length(spec: RunSpec) -> Dict[str, Any]:
    ident = spec.identity()
    ident["train"].pop("epochs", None)
    return ident


def classify(spec: RunSpec, layout: RunLayout) -> str:
    """Decide what launching ``spec`` into its run_dir means (no side effects)."""
    from launcher.core.specio import load_run_yaml_spec

    root = layout.root
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return FRESH
    if not root.is_dir():
        return FOREIGN
    if not layout.run_yaml.exists():
        return FOREIGN
    try:
        old = load_run_yaml_spec(layout.run_yaml)
    except ConfigError:
        return FOREIGN
    state = layout.read_state()
    if spec.task not in TRAINING_TASKS:
        return ADD if state.get("status") == "finished" or old.task not in TRAINING_TASKS else DIFFERENT
    if spec.task == "resume":
        same = _identity_without_length(old) == _identity_without_length(spec)
    else:
        same = old.identity() == spec.identity()
    if not same:
        return DIFFERENT
    if state.get("status") == "finished":
        done_epochs = state.get("epochs_done")
        if spec.task == "resume" and done_epochs is not None and spec.train.epochs > done_epochs:
            return RESUME
        return SKIP
    return RESUME


def describe_state(spec: RunSpec, layout: RunLayout) -> str:
    kind = classify(spec, layout)
    return {
        FRESH: "fresh run directory: a new run",
        RESUME: "holds an unfinished run of this spec: it will be resumed",
        SKIP: "holds a finished run of this spec: it will be skipped",
        DIFFERENT: "holds a different run: refused unless overwrite=true",
        FOREIGN: "exists and is not an mlip-launch run directory: refused unless overwrite=true",
        ADD: f"holds a finished run: task={spec.task} adds its outputs",
    }[kind]


def state_problem(spec: RunSpec) -> Optional[str]:
    """The run_dir problem preflight reports (None when launching is allowed)."""
    layout = RunLayout.of(spec.run_dir)
    kind = classify(spec, layout)
    if kind in (DIFFERENT, FOREIGN) and not spec.overwrite:
        what = "a different run" if kind == DIFFERENT else "files that are not an mlip-launch run"
        return f"run_dir: {layout.root} holds {what}; choose another run_dir or set overwrite=true"
    if spec.task == "resume" and kind == FRESH and not (spec.model_in or spec.model.manifest):
        return f"run_dir: {layout.root} holds no run to resume (and model_in is not set)"
    return None


def _move_aside(root: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = root.with_name(f"{root.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        target = root.with_name(f"{root.name}.replaced-{stamp}-{n}")
        n += 1
    root.rename(target)
    return target


@contextlib.contextmanager
def _run_lock(layout: RunLayout):
    """One job per run directory at a time; the OS drops the lock when a killed job dies."""
    import fcntl

    layout.root.mkdir(parents=True, exist_ok=True)
    fh = open(layout.lock, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"run_dir: {layout.root} is in use by another running job") from None
        yield
    finally:
        fh.close()


def run_job(spec: RunSpec, *, echo=print, prestarted: Optional[Any] = None) -> JobResult:
    """Run one validated spec to completion (or skip/resume it) in its run directory.

    ``prestarted`` is what the backend's ``prestart`` hook returned at launch; it reaches the
    backend through the JobContext.
    """
    from launcher.backends import get_backend
    from launcher.core import preemption
    from launcher.core.specio import dump_run_yaml
    from trainers.api import JobContext

    layout = RunLayout.of(spec.run_dir)
    kind = classify(spec, layout)
    if kind == SKIP:
        msg = f"{layout.root}: already finished, skipping (launch with overwrite=true to run again)"
        echo(msg)
        return JobResult(str(layout.root), "skipped", layout.read_state().get("result", {}), msg)
    if kind in (DIFFERENT, FOREIGN):
        if not spec.overwrite:
            raise ConfigError(state_problem(spec) or f"run_dir: {layout.root} cannot be used")
        moved = _move_aside(layout.root)
        echo(f"{layout.root}: previous contents moved to {moved}")
        kind = FRESH

    set_thread_defaults(os.environ)
    preemption.install_preemption_handler()
    backend = get_backend(spec.backend)
    with _run_lock(layout):
        layout.create()
        if kind == ADD:
            atomic_write_text(layout.task_yaml(spec.task), dump_run_yaml(spec))
        else:
            atomic_write_text(layout.run_yaml, dump_run_yaml(spec))
        prev = layout.read_state()
        attempt = int(prev.get("attempt", 0)) + 1 if kind == RESUME else 1
        if kind != ADD:
            layout.write_state(status="running", task=spec.task, attempt=attempt, host=socket.gethostname(),
                         pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         slurm_job_id=os.environ.get("SLURM_JOB_ID"))
        ctx = JobContext(spec=spec, layout=layout, resume=(kind == RESUME), attempt=attempt, prestarted=prestarted)
        if kind == RESUME:
            echo(f"{layout.root}: resuming an unfinished run (attempt {attempt})")
        t0 = time.time()
        try:
            result = backend.run(ctx) or {}
        except preemption.Preempted:
            if kind != ADD:
                layout.write_state(status="preempted", wall_s=time.time() - t0)
            echo(f"{layout.root}: preempted; checkpoint saved, the run resumes when launched again")
            preemption.run_deferred_handlers()
            return JobResult(str(layout.root), "preempted", {}, "preempted")
        except BaseException as e:
            if kind != ADD:
                layout.write_state(status="failed", error=f"{type(e).__name__}: {e}", wall_s=time.time() - t0)
            raise
        if kind != ADD:
            layout.write_state(status="finished", result=result, wall_s=time.time() - t0,
                         epochs_done=result.get("epochs_done", spec.train.epochs))
    echo(f"{layout.root}: {spec.task} finished")
    return JobResult(str(layout.root), "finished", result)

