"""``logs/train.log`` and ``logs/metrics.jsonl`` of a training run (written by rank 0 only), and where
third-party warnings go: train.log, not the console (:func:`third_party_warnings`)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from launcher.core.atomic import append_jsonl, atomic_write_text, read_jsonl
from launcher.core.layout import RunLayout


class RunLog:
    """``logs/train.log`` (and the console on rank 0) plus ``logs/metrics.jsonl``."""

    def __init__(self, layout: RunLayout, enabled: bool, echo: bool = True) -> None:
        self.layout, self.enabled, self.echo = layout, enabled, echo
        self.bars = False  # tqdm bars are on: console lines go through tqdm.write so bars stay intact
        self.t0 = time.time()

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        with open(self.layout.train_log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo:
            if self.bars:
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def metrics(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            record = {"time": round(time.time() - self.t0, 3), **record}
            append_jsonl(self.layout.metrics_jsonl, record)

    def truncate_after(self, step: int) -> None:
        """Drop metric lines a killed attempt wrote after the checkpoint we resume from."""
        if not self.enabled or not self.layout.metrics_jsonl.exists():
            return
        kept = [r for r in read_jsonl(self.layout.metrics_jsonl) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.layout.metrics_jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


# ------------------------------------------------------------------ third-party warnings
#: Our own code: a warning raised here still reaches the console.
_OWN = tuple(str(Path(__file__).resolve().parents[2] / d) + os.sep
             for d in ("launcher", "trainers", "data", "hydra_plugins", "tests", "scripts"))
_WARNINGS_PY = (warnings.__file__ or "").rstrip("c")


def _ours(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_OWN)


def _warn_site() -> str:
    """The file of the code that called ``warnings.warn`` (or the Python frame a C warning was raised under),
    whatever ``stacklevel`` made the warning name."""
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename == __file__ or f.f_code.co_filename.rstrip("c") == _WARNINGS_PY):
        f = f.f_back
    return f.f_code.co_filename if f is not None else ""


def is_third_party(message: Any, filename: str) -> bool:
    """A warning raised by torch / e3nn / mace / cuequivariance ... rather than by us: it names a file outside
    our packages, was raised from one (a ``stacklevel`` can name our caller), or comes from torch's C++ side."""
    return not (_ours(filename) and _ours(_warn_site())) or "Triggered internally at" in str(message)


@contextlib.contextmanager
def third_party_warnings(log_path: Optional[Path]) -> Iterator[None]:
    """Within it, Python warnings raised by third-party code go to ``log_path`` (train.log) with a timestamp,
    not to the console (they are printed by every run and are not the user's to act on); ``None`` drops them
    (the other ranks of a multi-process run: rank 0 logs the same ones). Our own warnings are shown as before.
    DataLoader workers forked inside it inherit it."""
    previous = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if not is_third_party(message, filename):
            previous(message, category, filename, lineno, file, line)
            return
        if log_path is None:
            return
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        try:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} third-party warning: {text}\n")
        except OSError:   # the log is gone (a run dir moved aside): better on the console than lost
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        _import_mace_quietly(log_path)
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = previous


def _import_mace_quietly(log_path: Optional[Path]) -> None:
    """Import mace once with its import-time prints (``cuequivariance ... is not available``, on stdout) sent to
    ``log_path``; a process imports a module once, so later imports print nothing."""
    if "mace.modules" in sys.modules:
        return
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            import mace.modules  # noqa: F401
    finally:
        text = buf.getvalue().strip()
        if text and log_path is not None:
            with open(log_path, "a", encoding="utf-8") as fh:
                for line in text.splitlines():
                    fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} third-party output: {line}\n")
