"""Preemption: submitit signals a job with SIGUSR2 before its time limit or on preemption.

Trainers poll :func:`preemption_requested` between steps, write a checkpoint and raise
:class:`Preempted`; the job exits so submitit (or ``scontrol requeue``) runs it again, and the
run-dir state machine resumes it.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, List

from launcher.core.errors import Preempted

__all__ = ["Preempted", "preemption_requested", "request_preemption", "add_listener", "reset",
           "install_preemption_handler", "run_deferred_handlers"]

_requested = threading.Event()
_listeners: List[Callable[[int], None]] = []


def preemption_requested() -> bool:
    return _requested.is_set()


def request_preemption(signum: int = signal.SIGUSR2) -> None:
    _requested.set()
    for fn in list(_listeners):
        fn(signum)


def add_listener(fn: Callable[[int], None]) -> Callable[[], None]:
    """Call fn(signum) on preemption (the FairChem runner forwards the signal to its child)."""
    _listeners.append(fn)
    return lambda: _listeners.remove(fn) if fn in _listeners else None


def reset() -> None:
    _requested.clear()


def install_preemption_handler(signals=(signal.SIGUSR2, signal.SIGTERM)) -> None:
    """Route USR2/TERM to the flag. Only possible from the main thread; elsewhere a no-op.

    submitit installs its own USR2 handler in its job entry; ours chains to it so its requeue
    logic still runs after the trainer has checkpointed.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        previous = signal.getsignal(sig)

        def handler(signum, frame, _previous=previous):
            request_preemption(signum)
            if callable(_previous) and _previous not in (signal.SIG_IGN, signal.SIG_DFL, handler):
                # submitit's handler requeues and exits; let the trainer checkpoint first by
                # deferring it to the job's exit path (see launcher.job)
                _deferred.append((_previous, signum, frame))

        signal.signal(sig, handler)


_deferred: list = []


def run_deferred_handlers() -> None:
    """Run handlers (submitit's) that were deferred until the trainer had checkpointed."""
    while _deferred:
        fn, signum, frame = _deferred.pop(0)
        fn(signum, frame)
