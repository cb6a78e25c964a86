"""Sweep summary: one row per job (overrides, state, best validation metrics, wall time, paths).

Writes ``SWEEP_DIR/summary.csv``, ``summary.md`` and ``summary.png`` (validation loss of every job
against epoch). Metrics come from each run directory: ``artifacts/manifest.json`` (the best
epoch's metrics) and ``logs/metrics.jsonl`` (the curve, and the best val line where there is
no manifest yet). Works on finished, failed and still-running jobs alike.

An Optuna sweep (``hydra/sweeper=optuna``) ranks its trials: best objective first, failed trials last.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from launcher.core.layout import RunLayout

BASE_COLUMNS = ("index", "state", "overrides", "epochs", "best_epoch")
TAIL_COLUMNS = ("wall_s", "job_id", "cluster_state", "run_dir", "log_path", "error")
_NOT_METRICS = {"epoch", "step", "time", "lr", "split", "train_loss"}


def _val_records(run_dir: Path) -> List[Dict[str, Any]]:
    from launcher.core.atomic import read_jsonl

    return [r for r in read_jsonl(RunLayout.of(run_dir).metrics_jsonl) if r.get("split") == "val"]


def _train_epochs(run_dir: Path) -> Optional[int]:
    from launcher.core.atomic import read_jsonl

    epochs = [r.get("epoch") for r in read_jsonl(RunLayout.of(run_dir).metrics_jsonl)
              if isinstance(r.get("epoch"), (int, float))]
    return int(max(epochs)) if epochs else None


def best_metrics(run_dir: Path) -> Tuple[Dict[str, float], Optional[int]]:
    """(best validation metrics, their epoch): the manifest's, else the lowest val loss logged."""
    run_dir = Path(run_dir)
    try:
        m = json.loads(RunLayout.of(run_dir).manifest.read_text(encoding="utf-8"))
        metrics = {k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, (int, float))}
        if metrics:
            return metrics, m.get("best_epoch")
    except (OSError, ValueError):
        pass
    vals = [r for r in _val_records(run_dir) if isinstance(r.get("loss"), (int, float))]
    if not vals:
        return {}, None
    best = min(vals, key=lambda r: r["loss"])
    return ({k: v for k, v in best.items() if k not in _NOT_METRICS and isinstance(v, (int, float))},
            best.get("epoch"))


def objective_value(run_dir: Path, objective: str, task: str = "train") -> Optional[float]:
    """The number an Optuna trial reports for ``eval.objective`` (``val_<metric>``), None where the run has none.

    Training tasks: the lowest finite ``<metric>`` of the run's validation records (logs/metrics.jsonl), so the
    default ``val_loss`` is the run's best validation loss. ``evaluate``: ``<metric>`` of eval/metrics.json.
    """
    import math

    metric = objective[len("val_"):] if objective.startswith("val_") else objective
    if task == "evaluate":
        try:
            value = json.loads((RunLayout.of(run_dir).eval_dir / "metrics.json").read_text(encoding="utf-8")).get(metric)
        except (OSError, ValueError, AttributeError):
            return None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    values = [float(r[metric]) for r in _val_records(Path(run_dir))
              if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    return min(values) if values else None


def _ranked(dicts: List[Dict[str, Any]]) -> List[Tuple[Optional[int], Dict[str, Any]]]:
    """(rank, job) best objective first; jobs without one (failed, unfinished) last, unranked, by index."""
    scored = [d for d in dicts if d.get("state") in ("FINISHED", "SKIPPED") and isinstance(d.get("objective"), (int, float))]
    scored.sort(key=lambda d: (d["objective"], d.get("index") or 0))
    ids = {id(d) for d in scored}
    rest = sorted((d for d in dicts if id(d) not in ids), key=lambda d: d.get("index") or 0)
    return [(i + 1, d) for i, d in enumerate(scored)] + [(None, d) for d in rest]


def _as_dict(o: Any) -> Dict[str, Any]:
    return asdict(o) if is_dataclass(o) else dict(o)


def varying_overrides(lists: Sequence[Sequence[str]]) -> List[List[str]]:
    """Each job's overrides less those every job shares: what the sweep varies (all of them for one job)."""
    shared = set(lists[0]).intersection(*map(set, lists[1:])) if len(lists) > 1 else set()
    return [[ov for ov in ovs if ov not in shared] for ovs in lists]


def rows(outcomes: Sequence[Any], objective: Optional[str] = None) -> Tuple[List[str], List[Dict[str, Any]]]:
    """(columns, one row per job); ``val_*`` columns are the union of every job's metrics.

    The ``overrides`` column shows what differs between jobs (overrides all of them share are left
    out); ``sweep.json`` keeps the full lists. With ``objective`` (an Optuna sweep's ``eval.objective``)
    the rows are ranked by each job's reported objective, best first, and failed jobs come last, unranked.
    """
    out: List[Dict[str, Any]] = []
    metric_keys: List[str] = []
    dicts = [_as_dict(o) for o in outcomes]
    swept = dict(zip(map(id, dicts), varying_overrides([d.get("overrides") or [] for d in dicts])))
    order = _ranked(dicts) if objective else [(None, d) for d in dicts]
    for rank, d in order:
        varied = swept[id(d)]
        run_dir = Path(d.get("run_dir") or ".")
        metrics, best_epoch = best_metrics(run_dir) if d.get("run_dir") else ({}, None)
        row = {"index": d.get("index"), "state": d.get("state"), "overrides": " ".join(varied),
               "epochs": _train_epochs(run_dir) if d.get("run_dir") else None, "best_epoch": best_epoch}
        if objective:
            row = {"rank": rank, **row, "objective": d.get("objective") if rank is not None else None}
        for k, v in metrics.items():
            key = f"val_{k}"
            row[key] = v
            if key not in metric_keys:
                metric_keys.append(key)
        wall = d.get("wall_s")
        row.update({"wall_s": round(wall, 1) if isinstance(wall, (int, float)) else None,
                    "job_id": d.get("job_id"), "cluster_state": d.get("cluster_state"),
                    "run_dir": d.get("run_dir"), "log_path": d.get("log_path"), "error": d.get("error")})
        out.append(row)
    if objective:
        return ["rank", *BASE_COLUMNS, "objective", *metric_keys, *TAIL_COLUMNS], out
    return [*BASE_COLUMNS, *metric_keys, *TAIL_COLUMNS], out


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def to_csv(columns: Sequence[str], table: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in table:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return buf.getvalue()


def to_markdown(columns: Sequence[str], table: Sequence[Dict[str, Any]], title: str = "Sweep summary",
                objective: Optional[str] = None) -> str:
    counts: Dict[str, int] = {}
    for r in table:
        counts[str(r.get("state"))] = counts.get(str(r.get("state")), 0) + 1
    lines = [f"# {title}", "", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs", ""]
    if objective:
        best = next((r for r in table if r.get("rank") == 1), None)
        lines += [f"Optuna study minimising `{objective}` (eval.objective); trials ranked best first, failed "
                  "trials last (no rank). Best: " + (f"trial {best['index']}, {objective} = {_fmt(best['objective'])}, "
                                                      f"`{best['overrides']}`" if best else "none (no trial finished)")
                  + "; its parameters are also in optimization_results.yaml.", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in table:
        cells = [_fmt(r.get(c)).replace("|", "\\|").replace("\n", " ") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(outcomes: Sequence[Any], path: Path, metric: str = "loss") -> bool:
    """One PNG: validation ``metric`` against epoch for every job. False when no job logged any.

    Points and styling come from ``launcher.core.curves`` (the same as each run's own ``logs/curves.png``).
    """
    from matplotlib.ticker import MaxNLocator

    from launcher.core.atomic import read_jsonl
    from launcher.core.curves import log_if_decades, new_figure, save_figure, val_points

    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    drawn = 0
    values: List[float] = []
    dicts = [_as_dict(o) for o in outcomes]
    swept = varying_overrides([d.get("overrides") or [] for d in dicts])
    for d, varied in zip(dicts, swept):
        if not d.get("run_dir"):
            continue
        pts = val_points(read_jsonl(RunLayout.of(Path(d["run_dir"])).metrics_jsonl), metric)
        if not pts:
            continue
        label = f"[{d.get('index')}] {' '.join(varied) or Path(d['run_dir']).name}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label[:60])
        values += [p[1] for p in pts]
        drawn += 1
    if drawn:
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(f"validation {metric} of {drawn} job(s)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        log_if_decades(ax, values)
        ax.grid(alpha=0.3)
        if drawn <= 16:
            ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, Path(path))
    return bool(drawn)


def write_summary(sweep_dir: Path, outcomes: Sequence[Any], objective: Optional[str] = None) -> Dict[str, Path]:
    """Write summary.csv / summary.md (always) and summary.png (when any job logged validation).

    ``objective`` (an Optuna study's eval.objective) ranks the jobs, as the study's trials."""
    from launcher.core.atomic import atomic_write_text

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    columns, table = rows(outcomes, objective)
    paths = {"csv": sweep_dir / "summary.csv", "md": sweep_dir / "summary.md"}
    atomic_write_text(paths["csv"], to_csv(columns, table))
    atomic_write_text(paths["md"], to_markdown(columns, table, title=f"Sweep summary: {sweep_dir}",
                                               objective=objective))
    if plot_curves(outcomes, sweep_dir / "summary.png"):
        paths["png"] = sweep_dir / "summary.png"
    return paths
