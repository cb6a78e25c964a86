"""Learning curves from ``logs/metrics.jsonl``: ``logs/curves.png`` of one run, and the drawing helpers the
sweep summary (``launcher.summary.plot_curves``) shares.

Every backend writes the same records (``split`` train / val, ``step``, ``epoch``, ``loss``, metrics), so one
renderer serves them all: MACE's trainer calls it after each validation, the FairChem runner after each of
FairChem's validations and at the end of each invocation. A record repeated for the same step (a run killed
and resumed redoes the steps since its checkpoint) counts once, the later one.

Torch-free; matplotlib is imported when a figure is drawn, through its object API (``Figure``), so no global
pyplot state is touched and a figure can be drawn from any thread. Files are replaced atomically.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

Points = List[Tuple[float, float]]

#: Validation metrics drawn per panel: energy errors and force errors (MACE's and FairChem's names).
ENERGY_METRIC = re.compile(r"^energy(_per_atom)?_(mae|rmse)(_per_atom)?$")
FORCE_METRIC = re.compile(r"^forces?_(mae|rmse)$")


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def is_progress(record: Dict[str, Any]) -> bool:
    """A training progress record (``train.log_every``), not an evaluation point: it has no ``train_loss``."""
    return record.get("split") == "train" and "train_loss" not in record


def series(records: Iterable[Dict[str, Any]], split: str, key: str, x: str = "step",
           progress_only: bool = False) -> Points:
    """``(x, record[key])`` of the ``split`` records, sorted by x, one point per x (the last one logged)."""
    pts: Dict[float, float] = {}
    for r in records:
        if r.get("split") != split or not _num(r.get(key)) or not _num(r.get(x)):
            continue
        if progress_only and not is_progress(r):
            continue
        pts[float(r[x])] = float(r[key])
    return sorted(pts.items())


def val_points(records: Iterable[Dict[str, Any]], metric: str = "loss") -> Points:
    """Validation ``metric`` against epoch (the sweep summary's curve of one job)."""
    return series(records, "val", metric, x="epoch")


def log_if_decades(ax: Any, values: Sequence[float]) -> None:
    """Log scale when positive values span more than a factor 20 (losses falling over decades)."""
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure outside pyplot (Agg canvas): no global state, no display needed."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """PNG bytes written atomically: a reader (a browser refreshing it) never sees half a file."""
    from launcher.core.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(Path(path), buf.getvalue())


def _steps_per_epoch(records: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Optimizer steps per epoch, from the latest validation record (epoch > 0) that has both."""
    best: Optional[Tuple[float, float]] = None
    for r in records:
        if r.get("split") == "val" and _num(r.get("step")) and _num(r.get("epoch")) and r["epoch"] > 0:
            if best is None or r["step"] >= best[0]:
                best = (float(r["step"]), float(r["epoch"]))
    return best[0] / best[1] if best and best[0] > 0 else None


def _metric_keys(records: Sequence[Dict[str, Any]], pattern: "re.Pattern[str]") -> List[str]:
    keys: List[str] = []
    for r in records:
        if r.get("split") == "val":
            keys += [k for k, v in r.items() if pattern.match(k) and _num(v) and k not in keys]
    return sorted(keys)


def render_run_curves(records: Sequence[Dict[str, Any]], path: Path, title: str = "") -> bool:
    """Draw ``curves.png`` of one run from its metrics records: train and val loss against the optimizer step
    (epochs on the top axis), and the val energy and force errors (with the replay errors of ``data.replay``
    as dashed lines). False (nothing written) when no record has
    a loss yet."""
    train = series(records, "train", "loss", progress_only=True)
    val = series(records, "val", "loss")
    if not train and not val:
        return False
    panels = [("energy", _metric_keys(records, ENERGY_METRIC)), ("force", _metric_keys(records, FORCE_METRIC))]
    panels = [(name, keys) for name, keys in panels if keys]
    fig = new_figure(5.0 * (1 + len(panels)), 4.2)
    axes = fig.subplots(1, 1 + len(panels), squeeze=False)[0]
    spe = _steps_per_epoch(records)
    ax = axes[0]
    for pts, label, style in ((train, "train", {"lw": 1.0, "alpha": 0.8}),
                              (val, "val", {"marker": "o", "ms": 3, "lw": 1.5})):
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
    log_if_decades(ax, [p[1] for p in train + val])
    ax.set_ylabel("loss")
    ax.set_title("loss")
    for ax, (name, keys) in zip(axes[1:], panels):
        values: List[float] = []
        for key in keys:
            pts = series(records, "val", key)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key)
            values += [p[1] for p in pts]
            replay = series(records, "replay", key)   # data.replay's held-out records, beside val
            if replay:
                ax.plot([p[0] for p in replay], [p[1] for p in replay], marker="s", ms=3, ls="--",
                        label=f"replay {key}")
                values += [p[1] for p in replay]
        log_if_decades(ax, values)
        ax.set_title(f"val {name} error")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if spe:
            top = ax.secondary_xaxis("top", functions=(lambda s, k=spe: s / k, lambda e, k=spe: e * k))
            top.set_xlabel("epoch", fontsize=8)
            top.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    # fixed margins in inches (tight_layout would cost a third of the drawing time, at every validation)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height,
                        top=1 - (1.0 if spe else 0.75) / height, wspace=0.25)
    save_figure(fig, path)
    return True


def update_curves(metrics_jsonl: Path, path: Path, title: str = "") -> bool:
    """Re-draw ``path`` from ``metrics_jsonl`` (see :func:`render_run_curves`)."""
    from launcher.core.atomic import read_jsonl

    return render_run_curves(read_jsonl(Path(metrics_jsonl)), path, title=title)


def redraw(metrics_jsonl: Path, path: Path, title: str = "") -> Optional[str]:
    """:func:`update_curves` for a running training: a drawing failure comes back as one line
    (``TypeName: message``) instead of raising, because a plot is never worth a lost run."""
    try:
        update_curves(metrics_jsonl, path, title=title)
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"{type(e).__name__}: {e}"
    return None


class BackgroundRedraw:
    """:func:`redraw` on a thread of its own, for a caller that must not stall while a figure is drawn.

    FairChem's runner reads the child's output on the thread that would draw: a drawing (about a second, more
    for matplotlib's first import) would hold the console and ``metrics.jsonl`` behind FairChem, and a stop
    signal would find the run's records steps behind the process. Requests made while a drawing runs are
    coalesced into one more drawing; :meth:`close` waits for the thread and draws a last time, so the file
    ends complete. ``on_fail`` gets a failed drawing's line (from the drawing thread).
    """

    def __init__(self, metrics_jsonl: Path, path: Path, title: str = "",
                 on_fail: Optional[Callable[[str], None]] = None) -> None:
        import threading

        self.metrics_jsonl, self.path, self.title, self.on_fail = Path(metrics_jsonl), Path(path), title, on_fail
        self._wanted = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="curves-redraw", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def _draw(self) -> None:
        failed = redraw(self.metrics_jsonl, self.path, title=self.title)
        if failed and self.on_fail is not None:
            self.on_fail(failed)

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            if self._closing:
                return
            self._wanted.clear()
            self._draw()

    def close(self) -> None:
        """Stop the thread (after a drawing in progress) and draw once more, on the caller's thread."""
        self._closing = True
        self._wanted.set()
        self._thread.join()
        self._draw()
