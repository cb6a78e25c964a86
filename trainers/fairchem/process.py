"""Running the FairChem process: output streamed to the console and a log file, signals forwarded.

A preempted job (SIGUSR2 from submitit/SLURM, or SIGTERM) forwards the signal to FairChem, waits
for it to stop, and reports preemption; the run directory holds the last epoch checkpoint, from
which the requeued job resumes.
"""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# How long FairChem gets to exit after a forwarded signal before it is killed.
STOP_GRACE_S = 60.0


@dataclass
class ProcessResult:
    returncode: int
    preempted: bool
    wall_s: float
    log_path: Path
    tail: List[str]

    def describe_exit(self) -> str:
        rc = self.returncode
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exit code {rc}"


def die_with_parent(signum: int = signal.SIGTERM, new_group: bool = False) -> Optional[Callable[[], None]]:
    """A ``preexec_fn``: on Linux the child gets ``signum`` when the launcher dies, whatever kills it
    (SIGKILL included: no orphaned FairChem on a node); with ``new_group`` it also leads its own process
    group, so that everything it starts can be stopped with one ``killpg``.

    Prepared in the parent (``ctypes`` loaded, libc opened) so that the forked child only makes one
    call: importing in a child forked while another thread imports can deadlock.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except Exception:  # noqa: BLE001 - best effort, not available everywhere
        prctl = None
    if prctl is None and not new_group:
        return None
    import os

    def preexec() -> None:
        if new_group:
            os.setpgid(0, 0)
        if prctl is not None:
            prctl(1, signum)  # PR_SET_PDEATHSIG

    return preexec


def kill_group(proc: "subprocess.Popen", signum: int = signal.SIGKILL) -> None:
    """Send ``signum`` to the process group ``proc`` leads (started with ``die_with_parent(new_group=True)``):
    ``proc`` and everything it started that is still in its group, even after ``proc`` itself ended. A group
    that is already gone is not an error."""
    import os

    try:
        os.killpg(proc.pid, signum)
    except OSError:
        pass


class ProbeFailed(Exception):
    """A short helper process (an interpreter probe, the env script) failed; ``str()`` says how, in one line."""


# Signals that end the launcher without running its exit handlers: while a helper process is tracked, they
# first kill its process group (SIGKILL of the launcher is covered by PR_SET_PDEATHSIG, SIGINT raises
# KeyboardInterrupt and unwinds normally).
_REAP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2)
_tracked: Dict[int, Callable[[], None]] = {}
_saved: Dict[int, Any] = {}


def _reap(signum: int, frame: Any) -> None:
    for kill in list(_tracked.values()):
        kill()
    if signal.getsignal(signum) is not _reap:
        return  # chained by a handler installed after ours (preemption): that one decides what happens
    handler = _saved.get(signum, signal.SIG_DFL)
    _restore()
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        import os

        os.kill(os.getpid(), signum)  # the signal's own effect, now that nothing is left behind


def _restore() -> None:
    for sig, handler in list(_saved.items()):
        if signal.getsignal(sig) is _reap:
            signal.signal(sig, handler)
    _saved.clear()


def track(owner: object, kill: Callable[[], None]) -> None:
    """Call ``kill`` (it kills ``owner``'s processes) if a stop signal ends the launcher before ``untrack(owner)``.
    The handlers are installed from the main thread (the first ``track`` must be made there)."""
    _tracked[id(owner)] = kill
    if threading.current_thread() is threading.main_thread() and not _saved:
        for sig in _REAP_SIGNALS:
            _saved[sig] = signal.signal(sig, _reap)


def untrack(owner: object) -> None:
    _tracked.pop(id(owner), None)
    if not _tracked and threading.current_thread() is threading.main_thread():
        _restore()


def run_probe(cmd: Sequence[str], *, env: Optional[Dict[str, str]] = None, timeout: Optional[float],
              what: str) -> subprocess.CompletedProcess:
    """Run a short helper to completion, with a time limit; its whole process group goes when it ends, when it
    times out, and when a stop signal ends the launcher meanwhile.

    Raises :class:`ProbeFailed` "``what`` timed out after N s" / "could not be started: ..." -- never a
    misleading result.
    """
    try:
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                preexec_fn=die_with_parent(signal.SIGKILL, new_group=True))
    except OSError as e:
        raise ProbeFailed(f"{what} could not be started: {e.strerror or e}") from None
    track(proc, lambda: kill_group(proc))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        raise ProbeFailed(f"{what} timed out after {timeout:g} s") from None
    finally:
        kill_group(proc)  # anything it left running in its group
        untrack(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def format_command(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def _start(cmd: Sequence[str], env: Dict[str, str], cwd: Path, early: Optional[Any]) -> Tuple[Any, float]:
    """(the process running ``cmd``, when it started): the early interpreter when it takes the command, else a
    new process leading its own process group."""
    taken = early.take(cmd, env, cwd) if early is not None else None
    if taken is not None:
        return taken
    started_at = time.time()
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
        preexec_fn=die_with_parent(new_group=True),
    )
    return proc, started_at


def _forwarder(proc: Any, forwarded: threading.Event, forward_as: Optional[int]) -> Callable[[int], None]:
    """The preemption listener: the stop signal passed on to ``proc`` (as ``forward_as`` when set), which is killed
    if it has not ended after :data:`STOP_GRACE_S`."""

    def forward(signum: int) -> None:
        forwarded.set()
        if proc.poll() is None:
            try:
                proc.send_signal(forward_as or signum)
            except ProcessLookupError:
                pass
            # a child that ignores the signal is killed after the grace period
            killer = threading.Timer(STOP_GRACE_S, lambda: proc.poll() is None and kill_group(proc))
            killer.daemon = True
            killer.start()

    return forward


def run_process(
    cmd: Sequence[str],
    *,
    env: Dict[str, str],
    cwd: Path,
    log_path: Path,
    echo: Optional[Callable[[str], None]] = None,
    tail_lines: int = 40,
    early: Optional[Any] = None,
    forward_as: Optional[int] = None,
) -> ProcessResult:
    """Run ``cmd``; every output line goes to ``log_path`` and to ``echo`` (stdout by default).

    ``early`` is an interpreter started at launch (``prewarm.Prewarm``): it runs ``cmd`` if it
    matches, else it is stopped and a new process starts. ``forward_as``: the signal a stop signal is
    forwarded as (torchrun passes SIGTERM on to its ranks, and dies of SIGUSR2). The process leads its own
    process group, which is killed once it has ended: nothing it started outlives the run.
    """
    from launcher.core import preemption

    echo = echo or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: List[str] = []
    t0 = time.time()
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"$ {format_command(cmd)}\n")
        log.flush()
        proc, started_at = _start(cmd, env, cwd, early)
        forwarded = threading.Event()
        forward = _forwarder(proc, forwarded, forward_as)
        remove = preemption.add_listener(forward)
        if preemption.preemption_requested():
            forward(signal.SIGTERM)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                log.write(line + "\n")
                log.flush()
                echo(line)
                tail.append(line)
                if len(tail) > tail_lines:
                    del tail[0]
            rc = proc.wait()
        except BaseException:
            # KeyboardInterrupt or an error of ours: never leave FairChem running behind us
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    kill_group(proc)
                    proc.wait()
            raise
        finally:
            remove()
            kill_group(proc)  # what it left behind (data loader workers, ranks of a dead torchrun)
            if proc.stdout is not None:
                proc.stdout.close()
        wall = time.time() - t0
        # the process's whole life (an early-started one began before t0): what FairChem's CLI alone would take
        log.write(f"# exit {rc} after {wall:.1f} s; the FairChem process lived {time.time() - started_at:.2f} s\n")
    return ProcessResult(returncode=rc, preempted=forwarded.is_set(), wall_s=wall, log_path=log_path, tail=tail)
