"""FairChem's metric log lines -> ``logs/metrics.jsonl`` records (the same file the core trainer writes), and
the console's form of FairChem's output (:class:`ConsoleLines`).

FairChem logs training metrics as ``energy_mae: 1.2e+00, ..., epoch: 1.0e+00, step: 1.3e+01`` and,
after ``Evaluating on val.``, the split's metrics in the same ``key: value`` form. Our child's progress
line (``--log-every``), ``step 40 | epoch 1.250 | loss 3.1 | lr 2.500e-03 | 85.2 structures/s``, becomes a
train record with ``"kind": "progress"``.

FairChem's validation line names the epoch but not the step; the record gets the step its epoch corresponds to,
``round(epoch x steps per epoch)`` (the runner's count, else the ratio of the latest train record), so every
record of the file is keyed by the optimizer step as the core trainer's are (curves.png; the same axis as
FairChem's own TensorBoard events).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

_PREFIX = re.compile(r"^(?:.*?\((?:INFO|WARNING|DEBUG)\): |(?:INFO|WARNING|DEBUG):[\w.]*:)")
_PAIR = re.compile(r"^([A-Za-z_][\w/]*): ([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))$")
_EVAL = re.compile(r"^Evaluating on (\w+)\.$")
_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"
_PROGRESS = re.compile(rf"^step (\d+) \| epoch {_NUM} \| loss {_NUM} \| lr {_NUM} \| {_NUM} structures/s$")


def parse_progress(line: str) -> Optional[Dict[str, Any]]:
    """``{"step": 40, "epoch": 1.25, "loss": 3.1, "lr": 0.0025, "structures_per_s": 85.2}`` for a progress line."""
    m = _PROGRESS.match(line.strip())
    if not m:
        return None
    return {"step": int(m.group(1)), "epoch": float(m.group(2)), "loss": float(m.group(3)), "lr": float(m.group(4)),
            "structures_per_s": float(m.group(5))}


def parse_metrics(message: str) -> Optional[Dict[str, float]]:
    """``{"energy_mae": 1.2, ...}`` for a ``key: number, key: number`` message, else None."""
    parts = message.strip().rstrip(",").split(", ")
    out: Dict[str, float] = {}
    for part in parts:
        m = _PAIR.match(part.strip())
        if not m:
            return None
        out[m.group(1)] = float(m.group(2))
    return out if len(out) >= 2 else None


class MetricsTap:
    """Feed it every output line; it appends one JSON line per metrics message."""

    def __init__(self, path: Path, run: str, on_val: Optional[Callable[[], None]] = None,
                 steps_per_epoch: Optional[int] = None) -> None:
        self.path = Path(path)
        self.run = run
        self.split = "train"
        self.on_val = on_val               # called after each validation record (curves.png)
        self.steps_per_epoch = steps_per_epoch
        self.ratio: Optional[float] = None  # steps per epoch, from the latest train record

    def _seen(self, record: Dict[str, Any]) -> None:
        step, epoch = record.get("step"), record.get("epoch")
        if isinstance(step, (int, float)) and isinstance(epoch, (int, float)) and epoch > 0:
            self.ratio = float(step) / float(epoch)

    def __call__(self, line: str) -> None:
        from launcher.core.atomic import append_jsonl

        message = _PREFIX.sub("", line.strip())
        progress = parse_progress(message)
        if progress is not None:
            append_jsonl(self.path, {"split": "train", "source": "fairchem", "kind": "progress", "run": self.run,
                                     "time": time.time(), **progress})
            self._seen(progress)
            return
        m = _EVAL.match(message)
        if m:
            self.split = m.group(1)
            return
        values = parse_metrics(message)
        if values is None:
            return
        record: Dict[str, Any] = {"split": self.split, "source": "fairchem", "run": self.run, "time": time.time()}
        record.update(values)
        for key in ("step", "epoch"):
            if key in record and float(record[key]).is_integer() and key == "step":
                record[key] = int(record[key])
        if record["split"] == "train":
            self._seen(record)
        elif "step" not in record and isinstance(record.get("epoch"), float) and (self.steps_per_epoch or self.ratio):
            record["step"] = int(round(record["epoch"] * (self.steps_per_epoch or self.ratio)))
        append_jsonl(self.path, record)
        if record["split"] == "val" and self.on_val is not None:
            self.on_val()
        self.split = "train"


# ------------------------------------------------------------------ what the console shows
#: A Python warning as ``warnings`` prints it: ``/path/x.py:23: FutureWarning: message``.
_PY_WARNING = re.compile(r"^\S.*?:\d+: (?:[A-Za-z_][\w.]*)?Warning: ")
#: A warning of FairChem's logging: ``WARNING:root:...`` or ``2026-... (WARNING): ...``.
_LOG_WARNING = re.compile(r"^(?:WARNING:[\w.]*:|\S.*?\(WARNING\): )")
#: Lines that start a record of their own (they end the swallowed lines of a multi-line warning).
_RECORD = re.compile(r"^(?:(?:INFO|WARNING|ERROR|DEBUG|CRITICAL):|\[mlip-launch\]|\[fairchem\]|step \d+ \||Traceback|"
                     r"\S.*?\((?:INFO|WARNING|ERROR|DEBUG)\): )")
_WARNING_LINES = 8   # at most this many lines of one warning's message before its source line


def progress_line(p: Dict[str, Any]) -> str:
    """Our child's progress line with 4 significant digits."""
    from launcher.core.metrics import sig

    return (f"step {p['step']} | epoch {p['epoch']:.3f} | loss {sig(p['loss'])} | lr {p['lr']:.4g} | "
            f"{sig(p['structures_per_s'])} structures/s")


class ConsoleLines:
    """Feed it every output line of FairChem; it returns what the console shows, or None for a line that only
    goes to the FairChem log: Python warnings (torch's ``torch.load`` FutureWarnings and the like, their message
    and source lines included) and FairChem's logged warnings. Metric lines are shown with units and 4
    significant digits, our progress lines with 4 digits; every other line as it is."""

    def __init__(self) -> None:
        self.split = "train"
        self._warning = -1   # >= 0: inside a Python warning, that many of its lines swallowed

    def __call__(self, line: str) -> Optional[str]:
        from launcher.core.metrics import metrics_line

        text = line.rstrip("\n")
        if self._warning >= 0:
            if text[:1] in (" ", "\t"):                 # the source line ends the warning
                self._warning = -1
                return None
            if not (_RECORD.match(text) or _PY_WARNING.match(text)) and self._warning < _WARNING_LINES:
                self._warning += 1                      # a message of several lines
                return None
            self._warning = -1
        if _PY_WARNING.match(text):
            self._warning = 0
            return None
        if _LOG_WARNING.match(text):
            return None
        message = _PREFIX.sub("", text.strip())
        progress = parse_progress(message)
        if progress is not None:
            return progress_line(progress)
        m = _EVAL.match(message)
        if m:
            self.split = m.group(1)
            return text
        values = parse_metrics(message)
        if values is None:
            return text
        where = self.split
        if "step" in values:
            where += f" step {int(values.pop('step'))}"
        if "epoch" in values:
            where += f" epoch {values.pop('epoch'):.3f}"
        self.split = "train"
        return f"[fairchem] {where}: {metrics_line(values)}"
