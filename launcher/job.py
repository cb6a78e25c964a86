"""Job entry: the run-directory state machine, then the backend.

State of ``run_dir`` against the spec being launched:

- fresh (absent or empty)          -> run
- same spec, unfinished            -> resume (what makes SLURM requeue and preemption safe)
- same spec, finished              -> skip with a message
- different spec                   -> error, unless ``overwrite=true`` (old run moved aside, never deleted)
- not a run directory (other files)-> error, unless ``overwrite=true``
- a run that failed before it wrote a checkpoint or an artifact -> fresh (a corrected command may reuse it)

The run directory is locked (``.lock``, flock) before anything in it is moved or written, and the
state is classified again under the lock: a directory another live job holds is refused, with or
without ``overwrite=true``, and the refused job touches nothing. The OS releases the lock of a killed
job; its state.json still says "running", which :meth:`RunLayout.status` reports as "interrupted" and
the next launch resumes. A job stopped at start by an input problem (ConfigError) removes, still under
the lock, what it wrote into a run_dir it found empty; nobody else cleans up a run_dir. ``overwrite=true``
is refused before anything moves when the run_dir holds one of the run's own inputs.

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

from launcher.core.atomic import atomic_write_text, remove_stale_temps
from launcher.core.env import cpu_count, set_thread_defaults
from launcher.core.errors import ConfigError
from launcher.core.layout import RunLayout, owner_alive, process_start
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


def _never_trained(layout: RunLayout) -> bool:
    """A failed or interrupted run that left no checkpoint and no artifact: nothing to keep."""
    if layout.status() not in ("failed", "interrupted"):
        return False
    return not any(any(d.iterdir()) for d in (layout.checkpoints, layout.artifacts) if d.is_dir())


def classify(spec: RunSpec, layout: RunLayout) -> str:
    """Decide what launching ``spec`` into its run_dir means (no side effects)."""
    from launcher.core.specio import load_run_yaml_spec

    root = layout.root
    if not root.exists() or (root.is_dir() and all(p.name == layout.lock.name for p in root.iterdir())):
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
        return FRESH if _never_trained(layout) else DIFFERENT
    if state.get("status") == "finished":
        done_epochs = state.get("epochs_done")
        if spec.task == "resume" and done_epochs is not None and spec.train.epochs > done_epochs:
            return RESUME
        return SKIP
    return RESUME


def describe_state(spec: RunSpec, layout: RunLayout, kind: Optional[str] = None) -> str:
    """What launching ``spec`` would do with its run_dir (``kind``: its :func:`classify` verdict, when known)."""
    kind = classify(spec, layout) if kind is None else kind
    status = layout.status()
    if status == "running":
        return f"is in use by a running job ({_owner(layout)}): refused"
    if kind == RESUME and status == "interrupted":
        return f"holds an interrupted run of this spec ({_owner(layout)} is gone): it will be resumed"
    return {
        FRESH: "fresh run directory: a new run",
        RESUME: "holds an unfinished run of this spec: it will be resumed",
        SKIP: "holds a finished run of this spec: it will be skipped",
        DIFFERENT: "holds a different run: refused unless overwrite=true",
        FOREIGN: "exists and is not an mlip-launch run directory: refused unless overwrite=true",
        ADD: f"holds a finished run: task={spec.task} adds its outputs",
    }[kind]


def state_problem(spec: RunSpec, kind: Optional[str] = None) -> Optional[str]:
    """The run_dir problem preflight reports (None when launching is allowed); ``kind``: the run_dir's
    :func:`classify` verdict, when the caller has it."""
    layout = RunLayout.of(spec.run_dir)
    kind = classify(spec, layout) if kind is None else kind
    if layout.status() == "running" and owner_alive(layout.read_state()):
        return f"run_dir: {layout.root} is in use by a running job ({_owner(layout)}); wait for it or choose another run_dir"
    if kind in (DIFFERENT, FOREIGN) and not spec.overwrite:
        what = "a different run" if kind == DIFFERENT else "files that are not an mlip-launch run"
        return f"run_dir: {layout.root} holds {what}; choose another run_dir or set overwrite=true"
    if kind in (DIFFERENT, FOREIGN) and spec.overwrite:
        inside = inputs_in_run_dir(spec, layout.root)
        if inside:
            return _inputs_inside_message(layout.root, inside)
    if spec.task == "resume" and kind == FRESH and not (spec.model_in or spec.model.manifest):
        return f"run_dir: {layout.root} holds no run to resume (and model_in is not set)"
    return None


def _inside(value: Any, root: Path) -> bool:
    """Whether ``value`` names an existing file or folder that is ``root`` or lies under it."""
    if not isinstance(value, str) or not value or "\n" in value:
        return False
    p = Path(value).expanduser()
    if not p.is_absolute() and "/" not in value:
        return False    # a bare word (a command on PATH, a head name), not a path
    try:
        if not os.path.lexists(p):
            return False
        return p.resolve().is_relative_to(root) or Path(os.path.abspath(p)).is_relative_to(root)
    except (OSError, ValueError):
        return False


def inputs_in_run_dir(spec: RunSpec, root: Path) -> list:
    """``[(key, path)]`` of the spec's inputs that live in ``root`` (which ``overwrite=true`` would move aside).

    Every path key of the schema, the model files it leads to (the weights a manifest names, a run
    directory's checkpoint), path-like values of ``backend_args`` (``--opt=PATH`` too) and ``backend_env``, and
    the data of each ``eval.heads`` head.
    """
    from launcher.core.schema import PATH_KEYS, get_key
    from launcher.model_files import model_files

    root = Path(root).resolve()
    found = [(k, get_key(spec, k)) for k in PATH_KEYS if k != "run_dir" and _inside(get_key(spec, k), root)]
    from launcher.core.replay_spec import PATH_LIST_KEYS

    found += [(f"{k}[{i}]", v) for k in PATH_LIST_KEYS for i, v in enumerate(get_key(spec, k) or []) if _inside(v, root)]
    found += [(k, str(p)) for k, p in model_files(spec, own=False) if _inside(str(p), root) and k not in dict(found)]
    for i, arg in enumerate(spec.backend_args or []):
        value = str(arg).split("=", 1)[-1]
        if _inside(value, root):
            found.append((f"backend_args[{i}]", value))
    for name, value in (spec.backend_env or {}).items():
        if _inside(str(value), root):
            found.append((f"backend_env.{name}", str(value)))
    found += [(f"eval.heads.{h}", str(v)) for h, v in (spec.eval.heads or {}).items() if _inside(str(v), root)]
    return found


def _inputs_inside_message(root: Path, inside: list) -> str:
    key, path = inside[0]
    more = f" (and {', '.join(k for k, _ in inside[1:])})" if len(inside) > 1 else ""
    return (f"{key}: {path} is inside run_dir {root}{more}, which overwrite=true would move aside; "
            "move the input out of run_dir, or choose another run_dir")


def _owner(layout: RunLayout) -> str:
    st = layout.read_state()
    return f"pid {st.get('pid')} on {st.get('host')}"


def _move_aside(root: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = root.with_name(f"{root.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        target = root.with_name(f"{root.name}.replaced-{stamp}-{n}")
        n += 1
    root.rename(target)
    return target


def _lock(layout: RunLayout) -> Any:
    """Take ``layout``'s lock (creating the directory); ConfigError when another job holds it.

    The lock counts only while ``.lock`` is still the file at that path: a job that moved the directory
    aside, or removed the run_dir it had just created, may have left us holding a lock on a file that is
    no longer there, so that case is tried again rather than taken for ownership.
    """
    import fcntl

    for _ in range(20):
        try:
            layout.root.mkdir(parents=True, exist_ok=True)
            fh = open(layout.lock, "a+")
        except FileNotFoundError:   # a parent was removed between our mkdir and open: try again
            continue
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ConfigError(f"run_dir: {layout.root} is in use by another running job ({_owner(layout)})") from None
        try:
            same = os.stat(layout.lock).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fh
        fh.close()
    raise ConfigError(f"run_dir: {layout.root} is being moved or removed by another job; launch again")


def _only_lock(root: Path) -> bool:
    """Whether ``root`` holds nothing but its lock file (a run_dir no job has written to)."""
    return root.is_dir() and all(p.name == ".lock" for p in root.iterdir())


def _existing_ancestor(root: Path) -> Path:
    node = root
    while not node.exists() and node != node.parent:
        node = node.parent
    return node


def _undo_fresh_start(layout: RunLayout, anchor: Path) -> bool:
    """Remove what this job created in a run_dir that held nothing when it took the lock.

    Called with the lock held, after an input problem found only at start (exit 2), so that the
    corrected command is not refused as "a different run". A run that got as far as a checkpoint or
    an artifact is kept. The lock file goes last, then the run_dir and the empty folders this job
    made above it; a job that locks the path meanwhile gets a new lock file (see :func:`_lock`).
    """
    import shutil

    root = layout.root
    if layout.checkpoint.exists() or (layout.artifacts.is_dir() and any(layout.artifacts.iterdir())):
        return False
    for child in list(root.iterdir()):
        if child.name == layout.lock.name:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    layout.lock.unlink(missing_ok=True)
    node = root
    while node != anchor:
        try:
            node.rmdir()
        except OSError:     # another job's files, or a folder in use: leave it
            break
        node = node.parent
    return True


def _restore(path: Path, content: Optional[bytes]) -> None:
    """Put back ``content`` at ``path`` (atomically), or remove ``path`` when there was none."""
    from launcher.core.atomic import atomic_write_bytes

    if content is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_bytes(path, content)


@contextlib.contextmanager
def _run_lock(layout: RunLayout):
    """One job per run directory at a time; the OS drops the lock when a killed job dies.

    Yields a function that moves the locked directory aside (``overwrite=true``) and locks the new,
    empty one: the old directory is never moved while another job holds it.
    """
    held = [_lock(layout)]

    def move_aside() -> Path:
        moved = _move_aside(layout.root)     # the lock moves with it, still held
        try:
            held.append(_lock(layout))
        finally:
            held.pop(0).close()
        return moved

    try:
        yield move_aside
    finally:
        for fh in held:
            fh.close()


def run_job(spec: RunSpec, *, echo=print, prestarted: Optional[Any] = None, state: Optional[str] = None) -> JobResult:
    """Run one validated spec to completion (or skip/resume it) in its run directory.

    ``prestarted`` is what the backend's ``prestart`` hook returned at launch; it reaches the
    backend through the JobContext. ``state``: the run_dir's :func:`classify` verdict that this process's
    preflight found just before (a single in-process run); without it, it is read here. Either way it only
    decides whether to take the lock: under the lock the run_dir is always classified again.
    """
    from launcher.backends import get_backend
    from launcher.core import preemption

    layout = RunLayout.of(spec.run_dir)
    kind = classify(spec, layout) if state is None else state
    if kind in (DIFFERENT, FOREIGN) and not spec.overwrite:
        raise ConfigError(state_problem(spec, kind) or f"run_dir: {layout.root} cannot be used")
    if kind == SKIP:
        return _skip(layout, echo)

    threads = job_threads()
    preemption.install_preemption_handler()
    backend = get_backend(spec.backend)
    anchor = _existing_ancestor(layout.root)
    with _run_lock(layout) as move_aside:
        kind = classify(spec, layout)          # again, now that no other job can change it
        if kind == SKIP:
            return _skip(layout, echo)
        pristine = kind == FRESH and _only_lock(layout.root)
        if kind in (DIFFERENT, FOREIGN):
            if not spec.overwrite:
                raise ConfigError(state_problem(spec, kind) or f"run_dir: {layout.root} cannot be used")
            inside = inputs_in_run_dir(spec, layout.root)
            if inside:
                raise ConfigError(_inputs_inside_message(layout.root, inside))
            echo(f"{layout.root}: previous contents moved to {move_aside()}")
            kind, pristine, anchor = FRESH, True, layout.root
        record = layout.task_yaml(spec.task)
        earlier = record.read_bytes() if kind == ADD and record.is_file() else None
        try:
            return _run_locked(spec, layout, kind, backend, echo, prestarted, threads)
        except ConfigError:      # an input problem found at start: leave a run_dir we made as it was
            if pristine:
                _undo_fresh_start(layout, anchor)
            elif kind == ADD:    # and a finished run keeps the record of its last evaluate/infer/export
                _restore(record, earlier)
            raise


def _run_locked(spec: RunSpec, layout: RunLayout, kind: str, backend: Any, echo, prestarted: Optional[Any],
                threads: int) -> JobResult:
    """The part of :func:`run_job` that runs with the run_dir locked and its state decided."""
    from launcher.core import preemption
    from launcher.core.specio import dump_run_yaml
    from trainers.api import JobContext

    stale = remove_stale_temps(layout.root)
    if stale:
        echo(f"{layout.root}: removed {len(stale)} unfinished temp file(s) of an interrupted job")
    prev = layout.read_state()
    interrupted = prev.get("status") == "running"     # we hold the lock: its job is gone
    if kind == FRESH:
        layout.state_json.unlink(missing_ok=True)      # a failed attempt's record, if any
    layout.create()
    if kind == ADD:
        atomic_write_text(layout.task_yaml(spec.task), dump_run_yaml(spec))
    else:
        atomic_write_text(layout.run_yaml, dump_run_yaml(spec))
    attempt = int(prev.get("attempt", 0)) + 1 if kind == RESUME else 1
    if kind != ADD:
        me = os.getpid()
        layout.write_state(status="running", task=spec.task, attempt=attempt, host=socket.gethostname(),
                           pid=me, pid_start=process_start(me), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           slurm_job_id=os.environ.get("SLURM_JOB_ID"))
    ctx = JobContext(spec=spec, layout=layout, resume=(kind == RESUME), attempt=attempt, prestarted=prestarted,
                     extra={"threads": threads})
    if kind == RESUME:
        how = "an interrupted" if interrupted else "an unfinished"
        echo(f"{layout.root}: resuming {how} run (attempt {attempt})")
    t0 = time.time()
    ck_before = _mtime(layout.checkpoint)
    try:
        result = backend.run(ctx) or {}
    except preemption.Preempted:
        saved = _mtime(layout.checkpoint) not in (None, ck_before)
        if kind != ADD:
            layout.write_state(status="preempted", wall_s=time.time() - t0, checkpoint_saved=saved)
        if saved:
            msg = "preempted; checkpoint saved, the run resumes when launched again"
        elif layout.checkpoint.exists():
            msg = "preempted before a new checkpoint; the run resumes from its previous checkpoint when launched again"
        else:
            msg = "preempted before its first checkpoint; the run starts over when launched again"
        echo(f"{layout.root}: {msg}")
        preemption.run_deferred_handlers()
        return JobResult(str(layout.root), "preempted", {}, msg)
    except BaseException as e:
        if kind != ADD:
            layout.write_state(status="failed", error=f"{type(e).__name__}: {e}", wall_s=time.time() - t0)
        raise
    if kind != ADD:
        layout.write_state(status="finished", result=result, wall_s=time.time() - t0,
                           epochs_done=result.get("epochs_done", spec.train.epochs))
    echo(f"{layout.root}: {spec.task} finished")
    return JobResult(str(layout.root), "finished", result)


def job_threads() -> int:
    """The CPU threads of this job: the user's OMP_NUM_THREADS, else the CPUs it was given. Exported once for the
    OpenMP / MKL runtimes and child processes (:func:`set_thread_defaults`); the backend gets it as a value,
    ``ctx.extra["threads"]``, rather than reading the environment back."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    set_thread_defaults(os.environ)
    return int(given) if given.isdigit() and int(given) > 0 else cpu_count()


def _skip(layout: RunLayout, echo) -> JobResult:
    msg = f"{layout.root}: already finished, skipping (launch with overwrite=true to run again)"
    echo(msg)
    return JobResult(str(layout.root), "skipped", layout.read_state().get("result", {}), msg)


def _mtime(path: Path) -> Optional[int]:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
