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
from typing import Any, Callable, Dict, List, Optional, Sequence

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


def die_with_parent() -> Optional[Callable[[], None]]:
    """A ``preexec_fn``: on Linux the child gets SIGTERM if the launcher dies (no orphaned training on a node).

    Prepared in the parent (``ctypes`` loaded, libc opened) so that the forked child only makes one
    call: importing in a child forked while another thread imports can deadlock.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except Exception:  # noqa: BLE001 - best effort, not available everywhere
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def format_command(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def run_process(
    cmd: Sequence[str],
    *,
    env: Dict[str, str],
    cwd: Path,
    log_path: Path,
    echo: Optional[Callable[[str], None]] = None,
    tail_lines: int = 40,
    early: Optional[Any] = None,
) -> ProcessResult:
    """Run ``cmd``; every output line goes to ``log_path`` and to ``echo`` (stdout by default).

    ``early`` is an interpreter started at launch (``prewarm.Prewarm``): it runs ``cmd`` if it
    matches, else it is stopped and a new process starts.
    """
    from launcher.core import preemption

    echo = echo or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: List[str] = []
    t0 = time.time()
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"$ {format_command(cmd)}\n")
        log.flush()
        taken = early.take(cmd, env, cwd) if early is not None else None
        if taken is not None:
            proc, started_at = taken
        else:
            started_at = time.time()
            proc = subprocess.Popen(
                [str(c) for c in cmd], cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                preexec_fn=die_with_parent(),
            )
        forwarded = threading.Event()

        def forward(signum: int) -> None:
            forwarded.set()
            if proc.poll() is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass
                # a child that ignores the signal is killed after the grace period
                killer = threading.Timer(STOP_GRACE_S, lambda: proc.poll() is None and proc.kill())
                killer.daemon = True
                killer.start()

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
                    proc.kill()
                    proc.wait()
            raise
        finally:
            remove()
            if proc.stdout is not None:
                proc.stdout.close()
        wall = time.time() - t0
        # the process's whole life (an early-started one began before t0): what FairChem's CLI alone would take
        log.write(f"# exit {rc} after {wall:.1f} s; the FairChem process lived {time.time() - started_at:.2f} s\n")
    return ProcessResult(returncode=rc, preempted=forwarded.is_set(), wall_s=wall, log_path=log_path, tail=tail)
