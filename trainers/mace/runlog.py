"""``logs/train.log`` and ``logs/metrics.jsonl`` of a training run (written by rank 0 only), what follows
each metrics record: TensorBoard events or a wandb run (``train.logger``) and ``logs/curves.png``, and where
third-party warnings go: train.log, not the console (:func:`third_party_warnings`).

The scalars sent to TensorBoard / wandb are the metrics.jsonl records themselves (:func:`scalars_of`), keyed by
the optimizer step, so the three never disagree. TensorBoard and wandb are imported only when a run uses them.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from launcher.core.atomic import append_jsonl, atomic_write_text, read_jsonl
from launcher.core.layout import RunLayout


class RunLog:
    """``logs/train.log`` (and the console on rank 0) plus ``logs/metrics.jsonl``, each record of which also goes to
    the ``train.logger`` sinks (:meth:`open_sinks`); :meth:`curves` redraws ``logs/curves.png``."""

    sinks: Sequence[Any] = ()             # TensorBoard / wandb writers (open_sinks), rank 0 only
    _curves_error: Optional[str] = None   # the last drawing failure, reported once
    _curves_current = False               # curves.png drawn from every record written so far

    def __init__(self, layout: RunLayout, enabled: bool, echo: bool = True) -> None:
        self.layout, self.enabled, self.echo = layout, enabled, echo
        if enabled:
            layout.logs.mkdir(parents=True, exist_ok=True)
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
            self._curves_current = False
            scalars = scalars_of(record) if self.sinks else None
            if scalars and isinstance(record.get("step"), int):
                for sink in self.sinks:
                    sink.log(scalars, record["step"])

    def shares(self, records: Sequence[Dict[str, Any]]) -> None:
        """One line per rank in ``logs/shares.jsonl``: the indices that rank reads this epoch
        (:func:`trainers.mace.distributed.share_record`)."""
        if self.enabled:
            for rec in records:
                append_jsonl(self.layout.logs / "shares.jsonl", rec)

    def truncate_shares(self, epochs_done: int) -> None:
        """Drop share records of epochs not completed: a resumed run writes its current epoch's again."""
        path = self.layout.logs / "shares.jsonl"
        if not self.enabled or not path.exists():
            return
        kept = [r for r in read_jsonl(path) if int(r.get("epoch", 0)) <= epochs_done]
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    # ------------------------------------------------------------------ train.logger, curves.png
    def open_sinks(self, spec: Any, resume_step: int, resumed: bool) -> None:
        """Start ``train.logger``'s writer. Events after ``resume_step`` (a killed attempt's, redone now) are
        dropped: TensorBoard purges them from the first event of the new writer on (``purge_step``)."""
        if not self.enabled:
            return
        logger = spec.train.logger
        if logger == "tensorboard":
            self.sinks = [TensorBoardSink(self.layout.tensorboard, purge_step=resume_step + 1)]
        elif logger == "wandb":
            self.sinks = [WandbSink(spec, self.layout, resumed=resumed)]
        if self.sinks:
            self.info(f"train.logger={logger}: {self.sinks[0].where}")

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def summary(self, values: Dict[str, Any]) -> None:
        """Final values of the run (best metrics) for loggers that keep a summary (wandb)."""
        for sink in self.sinks:
            sink.summary(values)

    def close(self, ok: bool = True) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close(ok)

    def curves(self, title: str = "") -> None:
        """Re-draw ``logs/curves.png`` from metrics.jsonl. A drawing failure is logged once and training goes on:
        a plot is never worth a lost run."""
        if not self.enabled or (self._curves_current and self.layout.curves_png.exists()):
            return
        from launcher.core.curves import redraw

        msg = redraw(self.layout.metrics_jsonl, self.layout.curves_png, title=title)
        self._curves_current = msg is None
        if msg is not None and msg != self._curves_error:
            self._curves_error = msg
            self.info(f"logs/curves.png not updated ({msg})")

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


def logger_problems(spec: Any) -> List[str]:
    """Preflight: the package ``train.logger`` needs is installed (training tasks only). Looked up, not imported:
    preflight stays fast."""
    import importlib.util

    from launcher.core.schema import TRAINING_TASKS

    name = spec.train.logger
    if spec.task not in TRAINING_TASKS or name not in ("tensorboard", "wandb"):
        return []
    if importlib.util.find_spec(name) is not None:
        return []
    fix = "pip install 'mlip-launch[wandb]'" if name == "wandb" else "pip install tensorboard"
    return [f"train.logger: {name} is not installed in this environment ({fix}), or set train.logger="
            f"{'tensorboard' if name == 'wandb' else 'none'}"]


#: Record keys that are not scalars of their own (or are logged under another name).
_NOT_SCALARS = {"time", "epoch", "step", "split", "cycle", "lr", "train_loss", "throughput", "data_wait", "loss"}


def scalars_of(record: Dict[str, Any]) -> Dict[str, float]:
    """The TensorBoard / wandb scalars of one metrics.jsonl record.

    A progress record (``train.log_every``) gives ``train/loss``, ``lr``, ``throughput`` (structures/s) and
    ``data_wait`` (fraction of the time waiting for batches); an evaluation gives ``val/loss`` and
    ``val/<metric>`` (``train/eval_loss`` when there is no validation set), ``train/epoch_loss`` (the mean
    training loss since the previous evaluation) and ``epoch``; a replay record (``data.replay``) gives
    ``replay/loss`` and ``replay/<metric>``.
    """
    def num(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    from launcher.core.curves import is_progress

    out: Dict[str, float] = {}
    if is_progress(record):
        for key, name in (("loss", "train/loss"), ("lr", "lr"), ("throughput", "throughput"),
                          ("data_wait", "data_wait")):
            if num(record.get(key)):
                out[name] = float(record[key])
        return out
    split = record.get("split")
    if split == "val":
        if num(record.get("loss")):
            out["val/loss"] = float(record["loss"])
        out.update({f"val/{k}": float(v) for k, v in record.items() if k not in _NOT_SCALARS and num(v)})
    elif split == "train" and num(record.get("loss")):
        out["train/eval_loss"] = float(record["loss"])
    elif split == "replay":   # data.replay's held-out records: replay/loss, replay/<metric>
        out.update({f"replay/{k}": float(v) for k, v in record.items() if k not in _NOT_SCALARS - {"loss"} and num(v)})
        return out
    if num(record.get("train_loss")):
        out["train/epoch_loss"] = float(record["train_loss"])
    if num(record.get("epoch")):
        out["epoch"] = float(record["epoch"])
    return out


class TensorBoardSink:
    """Event files under ``logs/tensorboard/`` through torch's SummaryWriter (the tensorboard package)."""

    def __init__(self, folder: Any, purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.where = f"events in {folder} (tensorboard --logdir {folder})"
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step, flush_secs=30)

    def log(self, scalars: Dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def summary(self, values: Dict[str, Any]) -> None:
        pass

    def close(self, ok: bool) -> None:
        self.writer.close()


def wandb_run_id(layout: RunLayout, resumed: bool) -> str:
    """The wandb run id of this run directory: kept in ``logs/wandb/run_id`` so a resumed run continues the
    same wandb run; a fresh start gets a new one."""
    import secrets

    path = layout.logs / "wandb" / "run_id"
    if resumed and path.is_file():
        found = path.read_text(encoding="utf-8").strip()
        if found:
            return found
    run_id = secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


class WandbSink:
    """A wandb run with its files under ``logs/wandb/``; offline unless the user set ``WANDB_MODE``."""

    def __init__(self, spec: Any, layout: RunLayout, resumed: bool) -> None:
        import wandb

        kwargs: Dict[str, Any] = {}
        if not os.environ.get("WANDB_MODE"):
            kwargs["mode"] = "offline"
        self.run = wandb.init(project=spec.train.wandb_project or "mlip-launch", name=spec.run_name,
                              id=wandb_run_id(layout, resumed), resume="allow", dir=str(layout.logs),
                              config=spec.to_dict(), **kwargs)
        mode = kwargs.get("mode") or os.environ["WANDB_MODE"]
        self.where = f"wandb run {self.run.id} ({mode}) in {layout.logs / 'wandb'}"

    def log(self, scalars: Dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def flush(self) -> None:
        pass

    def summary(self, values: Dict[str, Any]) -> None:
        self.run.summary.update(values)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)
