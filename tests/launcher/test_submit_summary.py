"""Sweep summary: rows from real run directories (metrics.jsonl, manifest.json), CSV, Markdown, PNG."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from launcher.core.atomic import append_jsonl
from launcher.submit import JobOutcome
from launcher.summary import best_metrics, rows, write_summary


def _run_dir(root: Path, name: str, losses, manifest_metrics=None) -> Path:
    rd = root / name
    for epoch, loss in enumerate(losses, start=1):
        append_jsonl(rd / "logs" / "metrics.jsonl", {"split": "train", "epoch": epoch, "loss": loss * 0.5})
        append_jsonl(rd / "logs" / "metrics.jsonl", {"split": "val", "epoch": epoch, "loss": loss,
                                                     "force_mae": loss / 10, "lr": 0.01, "time": 1.0})
    if manifest_metrics is not None:
        (rd / "artifacts").mkdir(parents=True)
        (rd / "artifacts" / "manifest.json").write_text(json.dumps(
            {"backend": "mace", "weights": {}, "metrics": manifest_metrics, "best_epoch": 2}))
    return rd


def test_best_metrics_prefer_the_manifest_then_the_lowest_val_loss(tmp_path):
    with_manifest = _run_dir(tmp_path, "a", [3.0, 1.0, 2.0], manifest_metrics={"loss": 1.0, "force_mae": 0.1})
    assert best_metrics(with_manifest) == ({"loss": 1.0, "force_mae": 0.1}, 2)
    running = _run_dir(tmp_path, "b", [3.0, 0.5, 2.0])
    metrics, epoch = best_metrics(running)
    assert epoch == 2 and metrics == {"loss": 0.5, "force_mae": 0.05}
    assert best_metrics(tmp_path / "never-started") == ({}, None)


def test_summary_files_one_row_per_job_with_state_metrics_and_paths(tmp_path):
    ok = _run_dir(tmp_path, "0", [2.0, 1.0], manifest_metrics={"loss": 1.0, "force_mae": 0.1})
    failed = _run_dir(tmp_path, "1", [4.0])
    outcomes = [
        JobOutcome(0, str(ok), "FINISHED", ["train.lr=0.01"], wall_s=12.345, job_id="5_0", log_path="/l/0.err",
                   cluster_state="COMPLETED"),
        JobOutcome(1, str(failed), "FAILED", ["train.lr=0.02"], error="ValueError: boom", job_id="5_1",
                   log_path="/l/1.err", cluster_state="FAILED"),
        JobOutcome(2, str(tmp_path / "2"), "PENDING", ["train.lr=0.03"], job_id="5_2"),
    ]
    paths = write_summary(tmp_path / "sweep", outcomes)
    with open(paths["csv"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["state"] for r in table] == ["FINISHED", "FAILED", "PENDING"]
    assert table[0]["overrides"] == "train.lr=0.01" and float(table[0]["val_loss"]) == 1.0
    assert table[0]["epochs"] == "2" and table[0]["best_epoch"] == "2" and table[0]["wall_s"] == "12.3"
    assert float(table[1]["val_loss"]) == 4.0 and table[1]["error"] == "ValueError: boom"
    assert table[1]["log_path"] == "/l/1.err" and table[1]["cluster_state"] == "FAILED"
    assert table[2]["val_loss"] == "" and table[2]["run_dir"].endswith("/2")
    md = paths["md"].read_text()
    assert "1 FAILED, 1 FINISHED, 1 PENDING" in md and "| train.lr=0.02 |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_png_when_no_job_logged_validation(tmp_path):
    paths = write_summary(tmp_path, [JobOutcome(0, str(tmp_path / "0"), "PENDING", [])])
    assert "png" not in paths and not (tmp_path / "summary.png").exists()
    columns, table = rows([JobOutcome(0, str(tmp_path / "0"), "PENDING", [])])
    assert columns[:2] == ["index", "state"] and table[0]["state"] == "PENDING"


def test_overrides_column_shows_what_the_sweep_varies(tmp_path):
    outcomes = [JobOutcome(i, str(tmp_path / str(i)), "PENDING", ["device=cpu", f"train.lr={lr}"])
                for i, lr in enumerate((0.1, 0.2))]
    _, table = rows(outcomes)
    assert [r["overrides"] for r in table] == ["train.lr=0.1", "train.lr=0.2"]
    _, single = rows(outcomes[:1])
    assert single[0]["overrides"] == "device=cpu train.lr=0.1"
