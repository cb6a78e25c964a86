"""SIGINT and SIGTERM as an exception, so that an interrupted write cleans up after itself.

By default SIGTERM kills the process on the spot (no ``finally`` runs) and SIGINT raises a
``KeyboardInterrupt`` anywhere; either way a command that writes could leave a temporary folder of
shards behind. Inside :func:`interruptible` both raise :class:`Interrupted`, so the writer's cleanup
runs; while the finished output is moved into place (:func:`committing`) they are held back, so
that move is never cut in half, and once it is done the command completes.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException like ``KeyboardInterrupt`` (no ``except Exception``
    swallows it). ``exit_code`` is the shell's 128 + signal number (130, 143)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        super().__init__(f"interrupted by {self.name}")


class _State:
    active = False      # our handlers are installed
    holding = False     # the output is being moved into place: a signal waits
    done = False        # the output is in place: the command finishes regardless
    held: int | None = None


def _handler(signum: int, frame: Any) -> None:
    if _State.holding or _State.done:
        _State.held = signum
        return
    for sig in SIGNALS:  # a second signal must not cut the cleanup of the first short
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT / SIGTERM raise :class:`Interrupted` in the body (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _State.active, _State.holding, _State.done, _State.held = True, False, False, None
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        _State.active, _State.holding, _State.done = False, False, False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def committing() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back while the body moves finished output into place.

    A signal that arrived meanwhile is raised as :class:`Interrupted` if the move failed (the cleanup runs),
    and dropped if it succeeded: the output is complete, so the command finishes and says so.
    """
    if not _State.active:
        yield
        return
    _State.holding = True
    try:
        yield
    except BaseException as exc:
        _State.holding = False
        held = _State.held
        if held is None or isinstance(exc, Interrupted):
            raise
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(held) from exc  # the user asked to stop: say so, and the cleanup runs
    _State.holding = False
    _State.done = True
