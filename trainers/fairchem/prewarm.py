"""Start FairChem's interpreter while the launcher is still setting the run up.

Importing torch and FairChem takes ~5 s. For a single in-process run of a FairChem backend, ``launch``
makes a :class:`Prewarm` handle as its first act (``prestart``), and the FairChem runner calls
:meth:`Prewarm.begin` as soon as the job starts, i.e. once preflight has accepted the run: the FairChem env's
interpreter (``child.py serve``) then imports while the runner prepares the run (data subsets, the derived
config, checkpoint helpers), and :func:`take` hands it the command when it is decided. A refused run or a dry
run starts nothing (an early interpreter competing for the CPU made refusals a second slower).

It is handed the command only when the interpreter, the script and the environment are exactly the
ones the run would have started; otherwise, or when the run never needs it, it is stopped. Only an
interpreter of an env ``scripts/setup-fairchem-env`` built is started this way (:func:`provisioned`); a
``backend_python`` of the user's own runs only as the run's own process. The handle is what the backend's
``prestart`` hook returns: it travels with the run's JobContext to the FairChem runner, never through a module
global. Standard library only: this is imported on the CLI's start-up path.
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from trainers.fairchem.models import BACKENDS as FAIRCHEM_BACKENDS
from trainers.fairchem.process import die_with_parent, kill_group, track, untrack

CHILD = Path(__file__).resolve().with_name("child.py")
# Arguments after which no in-process FairChem training follows, or the child's environment is not known yet.
_NOT_A_SINGLE_RUN = ("-m", "--multirun", "-h", "--help", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion",
                     "-sc", "--resolve", "-p", "--package")


# Variables the runner sets per invocation (its temp folder): sent with the command, not compared.
PER_RUN_ENV = ("TMPDIR",)


def _same_env(a: Dict[str, str], b: Dict[str, str]) -> bool:
    strip = lambda env: {k: v for k, v in env.items() if k not in PER_RUN_ENV}  # noqa: E731
    return strip(a) == strip(b)


class Prewarm:
    """One FairChem interpreter importing in the background, waiting for its command on stdin."""

    def __init__(self, python: Optional[str], env: Dict[str, str]) -> None:
        self.python = python
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        self._lock = threading.RLock()  # also taken by the signal handler (_kill), in the main thread
        self._closed = False
        self._begun = False
        atexit.register(self.close)

    def begin(self) -> None:
        """Start the interpreter, once, from the main thread: the run has been accepted. Forked there (a fork from
        another thread while this one imports can hang the child before its exec), PR_SET_PDEATHSIG then fires
        only when the launcher's main thread, i.e. the launcher, ends."""
        with self._lock:
            if self._begun or self._closed:
                return
            self._begun = True
        track(self, self._kill)  # a stop signal that ends the launcher takes the interpreter along
        try:
            if self.python is None:
                from trainers.fairchem.env import default_python

                self.python = default_python()
            with self._lock:
                if self.python is not None and not self._closed:
                    self.started_at = time.time()
                    self.proc = subprocess.Popen(
                        [self.python, str(CHILD), "serve"], cwd="/", env=self.env, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                        preexec_fn=die_with_parent(new_group=True),
                    )
        except Exception:  # noqa: BLE001 - an optimization: the run starts its own process instead
            self.proc = None

    def _kill(self) -> None:
        with self._lock:
            self._closed = True
            proc = self.proc
        if proc is not None:
            kill_group(proc)

    def matches(self, cmd: Sequence[str], env: Dict[str, str]) -> bool:
        return (not self._closed and self.proc is not None and self.proc.poll() is None and len(cmd) > 2
                and str(cmd[0]) == self.python and str(cmd[1]) == str(CHILD) and _same_env(env, self.env))

    def hand_over(self, cmd: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        assert self.proc is not None and self.proc.stdin is not None
        per_run = {k: v for k, v in (env or {}).items() if k in PER_RUN_ENV}
        self.proc.stdin.write(json.dumps({"argv": [str(c) for c in cmd[2:]], "cwd": str(cwd), "env": per_run}) + "\n")
        self.proc.stdin.flush()
        return self.proc

    def take(self, cmd: Sequence[str], env: Dict[str, str], cwd: Path) -> Optional[Tuple[subprocess.Popen, float]]:
        """(the started interpreter, now running ``cmd`` in ``cwd``; when it was started) if it matches,
        else None (and it is stopped). Either way the handle is spent."""
        if self.matches(cmd, env):
            proc, started_at = self.hand_over(cmd, cwd, env), self.started_at
            self.proc = None  # the runner owns it now: close() must not stop it
            untrack(self)
            return proc, started_at
        self.close()
        return None

    def close(self) -> None:
        """Kill the unused interpreter at once: it holds nothing but half-done imports, and waiting for it
        (a stop signal is acted on only between two bytecodes, seconds apart while torch loads) would hold
        the launcher's exit. Never waits for the start-up thread either."""
        with self._lock:
            self._closed = True
            proc, self.proc = self.proc, None
        untrack(self)
        if proc is not None:
            if proc.poll() is None:
                kill_group(proc)
                try:
                    proc.wait(timeout=1)  # SIGKILL: gone in milliseconds, unless stuck in the kernel
                except subprocess.TimeoutExpired:
                    pass
            try:
                proc.stdin.close()
            except (OSError, ValueError, AttributeError):
                pass


def wanted(argv: Sequence[str], environ: Optional[Dict[str, str]] = None) -> Optional[Dict[str, Optional[str]]]:
    """For ``launch`` arguments naming a FairChem backend in a single in-process run: what to start.

    Only the plain case qualifies (``backend=`` given on the command line, default launcher, no
    ``backend_env`` that would change the child's environment); anything else runs as before.
    """
    environ = os.environ if environ is None else environ
    if environ.get("MLIP_FAIRCHEM_PREWARM", "1") == "0":
        return None
    kv = {}
    for a in argv:
        if a in _NOT_A_SINGLE_RUN:
            return None
        key, sep, value = a.lstrip("+~").partition("=")
        if sep:
            kv[key] = value
    if kv.get("backend") not in FAIRCHEM_BACKENDS:
        return None
    if kv.get("hydra/launcher", "inprocess") != "inprocess" or kv.get("task", "train") == "export":
        return None
    if kv.get("dry_run", "false").lower() in ("true", "yes", "1", "on"):
        return None
    if any(k == "backend_env" or k.startswith("backend_env.") for k in kv):
        return None
    python = kv.get("backend_python") or None
    if python is not None and "/" not in python:
        return None  # resolved through PATH by the launcher; not worth second-guessing here
    return {"python": python}


def provisioned(python: Optional[str]) -> bool:
    """Only the interpreter of an env ``scripts/setup-fairchem-env`` built (its stamp beside ``bin/``; None: the
    default env) starts before preflight: a ``backend_python`` of the user's own is their program, started
    when an accepted run needs it, never for a refused one."""
    if python is None:
        return True
    from trainers.fairchem.provision import STAMP

    return (Path(python).parent.parent / STAMP).is_file()


def start(argv: Sequence[str]) -> Optional[Prewarm]:
    """``launch``: start the interpreter for these command-line arguments when :func:`wanted`; never raises."""
    try:
        want = wanted(argv)
        if want is None or not provisioned(want["python"]):
            return None
        from trainers.fairchem.env import child_env

        return Prewarm(want["python"], child_env({}))
    except Exception:  # noqa: BLE001 - an optimization must never stop a run
        return None


def start_for_spec(spec) -> Optional[Prewarm]:
    """``launch-run``: the same for one parsed run whose job runs in this process; never raises."""
    try:
        if (spec.backend not in FAIRCHEM_BACKENDS or spec.task == "export" or spec.dry_run
                or os.environ.get("MLIP_FAIRCHEM_PREWARM", "1") == "0"):
            return None
        from trainers.fairchem.env import child_env, resolve_python

        python = resolve_python(spec.backend_python)
        return Prewarm(python, child_env(spec.backend_env)) if provisioned(python) else None
    except Exception:  # noqa: BLE001 - bad input is reported by preflight, not here
        return None
