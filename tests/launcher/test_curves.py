"""logs/curves.png from metrics.jsonl records (launcher.core.curves), and the sweep summary sharing its helpers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.core.curves import render_run_curves, series, update_curves, val_points

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _mace_records():
    """Records as the core trainer writes them: progress lines, and one evaluation per epoch of 4 updates."""
    out = []
    for epoch in range(1, 4):
        for u in range(1, 5):
            step = (epoch - 1) * 4 + u
            out.append({"split": "train", "epoch": epoch, "step": step, "loss": 10.0 / step, "lr": 0.01,
                        "throughput": 50.0, "data_wait": 0.01})
        out.append({"split": "val", "epoch": epoch, "step": epoch * 4, "lr": 0.01, "train_loss": 5.0 / epoch,
                    "loss": 4.0 / epoch, "energy_rmse_per_atom": 0.1 / epoch, "energy_mae_per_atom": 0.08 / epoch,
                    "force_rmse": 0.3 / epoch, "force_mae": 0.2 / epoch})
    return out


def _image(path: Path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(str(path))


def test_series_keeps_one_point_per_step_the_last_logged():
    # a killed attempt logged step 5 and 6, the resumed one logged them again with other values
    records = [{"split": "train", "step": s, "loss": float(s)} for s in range(1, 7)]
    records += [{"split": "train", "step": s, "loss": 100.0 + s} for s in (5, 6)]
    assert series(records, "train", "loss") == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 105), (6, 106)]


def test_series_progress_only_leaves_out_evaluation_records():
    records = [{"split": "train", "step": 4, "loss": 1.0},
               {"split": "train", "step": 4, "loss": 9.0, "train_loss": 9.0}]   # an evaluation without val data
    assert series(records, "train", "loss", progress_only=True) == [(4, 1.0)]
    assert series(records, "train", "loss") == [(4, 9.0)]


def test_val_points_are_against_epoch_and_skip_non_numbers():
    records = [{"split": "val", "epoch": 1, "loss": 2.0}, {"split": "val", "epoch": 2, "loss": None},
               {"split": "val", "epoch": 3, "loss": float("nan")}, {"split": "train", "epoch": 3, "loss": 0.5},
               {"split": "val", "epoch": 2.5, "loss": 1.0}]
    assert val_points(records) == [(1.0, 2.0), (2.5, 1.0)]


def test_run_curves_png_has_loss_energy_and_force_panels(tmp_path):
    path = tmp_path / "logs" / "curves.png"
    assert render_run_curves(_mace_records(), path, title="run: mace train")
    img = _image(path)
    h, w = img.shape[:2]
    assert w > 2.5 * h                      # three panels side by side
    assert not list(path.parent.glob(".*.tmp"))   # written through a temp file, none left


def test_loss_only_when_no_error_metrics(tmp_path):
    records = [{"split": "train", "step": s, "epoch": 1, "loss": 1.0 / s} for s in range(1, 5)]
    path = tmp_path / "curves.png"
    assert render_run_curves(records, path)
    h, w = _image(path).shape[:2]
    assert w < 1.5 * h                      # one panel


def test_nothing_to_draw_writes_nothing(tmp_path):
    path = tmp_path / "curves.png"
    assert not render_run_curves([{"split": "train", "step": 1, "lr": 0.1}], path)
    assert not path.exists()


def test_update_curves_reads_metrics_jsonl_and_replaces_the_png(tmp_path):
    metrics, path = tmp_path / "metrics.jsonl", tmp_path / "curves.png"
    records = _mace_records()
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records[:5]) + '{"torn la')   # a torn last line
    assert update_curves(metrics, path)
    first = path.read_bytes()
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert update_curves(metrics, path)
    assert path.read_bytes() != first and path.read_bytes()[:8] == PNG_MAGIC


def test_fairchem_records_draw_too(tmp_path):
    """FairChem's names (energy_mae, forces_mae ...) land in the energy and force panels."""
    records = [{"split": "train", "source": "fairchem", "kind": "progress", "step": s, "epoch": s / 13,
                "loss": 3.0 / s, "lr": 1e-3} for s in range(1, 27)]
    records += [{"split": "val", "source": "fairchem", "epoch": e, "step": 13 * e, "loss": 1.0 / e,
                 "energy_mae": 0.5 / e, "forces_mae": 0.2 / e, "forcesx_mae": 0.1, "forces_cosine": 0.3}
                for e in (1.0, 2.0)]
    path = tmp_path / "curves.png"
    assert render_run_curves(records, path)
    h, w = _image(path).shape[:2]
    assert w > 2.5 * h


def test_sweep_summary_png_uses_the_same_points(tmp_path):
    from launcher.summary import plot_curves

    runs = []
    for i in range(2):
        run_dir = tmp_path / f"run{i}"
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _mace_records()))
        runs.append({"index": i, "run_dir": str(run_dir), "overrides": [f"train.lr={i}"]})
    out = tmp_path / "summary.png"
    assert plot_curves(runs, out)
    assert _image(out).shape[0] > 0
    assert not plot_curves([{"index": 0, "run_dir": str(tmp_path / "none")}], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize("values,log", [([1.0, 100.0], True), ([1.0, 2.0], False), ([0.0, 100.0], False)])
def test_log_scale_only_for_positive_values_spanning_decades(values, log):
    from launcher.core.curves import log_if_decades, new_figure

    ax = new_figure(3, 3).subplots()
    log_if_decades(ax, values)
    assert (ax.get_yscale() == "log") is log


def test_background_redraw_returns_at_once_and_close_draws_the_final_records(tmp_path, monkeypatch):
    import threading

    from launcher.core import curves

    metrics, png = tmp_path / "metrics.jsonl", tmp_path / "curves.png"
    records = _mace_records()
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records[:5]))
    started, release, drawn = threading.Event(), threading.Event(), []
    real = curves.update_curves

    def slow(path, out, title=""):      # a drawing that takes as long as the test says
        drawn.append(len(path.read_text().splitlines()))
        started.set()
        release.wait(30)
        return real(path, out, title=title)

    monkeypatch.setattr(curves, "update_curves", slow)
    bg = curves.BackgroundRedraw(metrics, png, title="t")
    bg.request()
    assert started.wait(30)             # the drawing runs (and waits), the caller goes on
    for _ in range(3):                  # requests during a drawing: one more drawing, not three
        bg.request()
    with metrics.open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records[5:]))
    release.set()
    bg.close()
    assert drawn[0] == 5 and drawn[-1] == len(records)   # the closing drawing saw every record
    assert len(drawn) in (2, 3), drawn  # first drawing, at most one coalesced one, the closing one
    assert _image(png).shape[0] > 0


def test_background_redraw_failure_is_one_line_to_on_fail(tmp_path):
    from launcher.core.curves import BackgroundRedraw

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in _mace_records()))
    (tmp_path / "file").write_text("")
    lines = []
    bg = BackgroundRedraw(metrics, tmp_path / "file" / "curves.png", on_fail=lines.append)   # parent is a file
    bg.request()
    bg.close()
    assert lines and all("\n" not in x and "Error" in x for x in lines)
