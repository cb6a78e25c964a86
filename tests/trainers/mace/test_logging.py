"""What a MACE training leaves for people watching it: TensorBoard events (or a wandb run) holding the same values
as logs/metrics.jsonl, and logs/curves.png redrawn after every validation (real trainings on the tiny EMT data)."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import kill_training_at, make_spec, run_with_hook

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(tiny_model_json, **extra):
    train = {"input_json": str(tiny_model_json), "epochs": 3, "log_every": 2}
    train.update(extra)
    return {"train": train}


def _records(run_dir: Path):
    from launcher.core.atomic import read_jsonl

    return read_jsonl(run_dir / "logs" / "metrics.jsonl")


def _scalars(folder: Path) -> dict:
    """{tag: [(step, value), ...]} of every event file in ``folder``, as TensorBoard reads them (purges included)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_events_match_metrics(run_dir: Path) -> dict:
    records = _records(run_dir)
    tb = _scalars(run_dir / "logs" / "tensorboard")
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train" and "throughput" in r]
    val = [(r["step"], r["loss"]) for r in records if r["split"] == "val"]
    assert train and val
    for tag, want in (("train/loss", train), ("val/loss", val)):
        got = tb[tag]
        assert [s for s, _ in got] == [s for s, _ in want], tag      # one event per step, none repeated
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag   # float32 events
    val_rec = [r for r in records if r["split"] == "val"]
    assert [v for _, v in tb["val/force_rmse"]] == pytest.approx([r["force_rmse"] for r in val_rec], rel=1e-6)
    assert [v for _, v in tb["val/energy_rmse_per_atom"]] == pytest.approx(
        [r["energy_rmse_per_atom"] for r in val_rec], rel=1e-6)
    assert [s for s, _ in tb["lr"]] == [s for s, _ in train]
    assert all(v > 0 for _, v in tb["throughput"])
    assert [v for _, v in tb["epoch"]] == [r["epoch"] for r in val_rec]
    return tb


def test_events_and_curves_follow_metrics_jsonl(tiny_data, tiny_model_json, tmp_path):
    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_data, **_train(tiny_model_json))
    assert spec.train.logger == "tensorboard"        # the default
    shots = []

    def look(_tr):   # curves.png right after each evaluation
        png = run_dir / "logs" / "curves.png"
        shots.append(hashlib.sha256(png.read_bytes()).hexdigest() if png.exists() else None)

    res = run_with_hook(spec, "evaluate_point", look)
    assert res.status == "finished"
    # curves.png is there after each validation, a new picture each time
    assert len(shots) == 3 and None not in shots and len(set(shots)) == 3
    png = (run_dir / "logs" / "curves.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    import matplotlib.image

    assert matplotlib.image.imread(str(run_dir / "logs" / "curves.png")).shape[1] > 1000
    assert list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    _assert_events_match_metrics(run_dir)
    assert "train.logger=tensorboard" in (run_dir / "logs" / "train.log").read_text()


def test_the_logger_is_not_part_of_the_runs_identity(tiny_data, tiny_model_json, tmp_path):
    """Relaunching an interrupted run with another train.logger resumes it (it is not a different run)."""
    a = make_spec(tmp_path / "run", tiny_data, **_train(tiny_model_json))
    b = make_spec(tmp_path / "run", tiny_data, **_train(tiny_model_json, logger="wandb", wandb_project="p"))
    assert a.identity() == b.identity()


def test_logger_none_writes_no_events_but_still_draws_curves(tiny_data, tiny_model_json, tmp_path):
    from launcher.job import run_job

    run_dir = tmp_path / "run"
    res = run_job(make_spec(run_dir, tiny_data, **_train(tiny_model_json, epochs=1, logger="none")),
                  echo=lambda *_: None)
    assert res.status == "finished"
    assert not (run_dir / "logs" / "tensorboard").exists() and not (run_dir / "logs" / "wandb").exists()
    assert (run_dir / "logs" / "curves.png").read_bytes()[:8] == PNG_MAGIC




def test_killed_and_resumed_run_has_each_step_once(tiny_data, tiny_model_json, tmp_path):
    """Checkpoints every 2 epochs: a kill -9 in epoch 4 leaves epoch 3's events (flushed at its validation) past
    the epoch-2 checkpoint; the resumed run redoes epoch 3 and TensorBoard keeps only its events."""
    from launcher.job import run_job

    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_data, **_train(tiny_model_json, epochs=4, save_every=2))
    # 6 updates per epoch: kill in epoch 4 (after epoch 3's validation at step 18)
    assert kill_training_at(spec, run_dir, 20) < 0
    before = _scalars(run_dir / "logs" / "tensorboard")
    assert max(s for s, _ in before["val/loss"]) == 18          # epoch 3's events were on disk

    res = run_job(spec, echo=lambda *_: None)                   # the same spec again: resumes from step 12
    assert res.status == "finished" and res.result["epochs_done"] == 4
    assert "resumed from" in (run_dir / "logs" / "train.log").read_text()
    assert len(list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    tb = _assert_events_match_metrics(run_dir)
    assert [s for s, _ in tb["val/loss"]] == [6, 12, 18, 24]


# ---------------------------------------------------------------------------------------------- wandb

def wandb_records(path: Path):
    """The records of an offline wandb run file (``run-ID.wandb``): wandb's log format (LevelDB's: 32 KiB blocks,
    each record a 7-byte header crc32, length, type; FULL / FIRST / MIDDLE / LAST) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            buf = chunk
        elif kind in (3, 4):
            buf += chunk
        else:
            break
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def wandb_summary(run_dir: Path) -> dict:
    """The final summary of the (one) offline wandb run under run_dir/logs/wandb."""
    files = list((run_dir / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    summary: dict = {}
    for record in wandb_records(files[0]):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def test_wandb_offline_run_holds_the_final_val_loss(tiny_data, tiny_model_json, tmp_path, monkeypatch):
    from launcher.job import run_job

    monkeypatch.delenv("WANDB_MODE", raising=False)      # offline is the default
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_data, name="wb", **_train(tiny_model_json, epochs=2, logger="wandb",
                                                               wandb_project="tests"))
    res = run_job(spec, echo=lambda *_: None)
    assert res.status == "finished"
    assert not (run_dir / "logs" / "tensorboard").exists()
    summary = wandb_summary(run_dir)
    vals = [r for r in _records(run_dir) if r["split"] == "val"]
    assert summary["val/loss"] == pytest.approx(vals[-1]["loss"])
    assert summary["best/loss"] == pytest.approx(min(r["loss"] for r in vals))
    assert summary["_step"] == vals[-1]["step"]
    run_id = (run_dir / "logs" / "wandb" / "run_id").read_text().strip()
    assert list((run_dir / "logs" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert (run_dir / "logs" / "curves.png").is_file()


def test_missing_wandb_is_one_line_and_exit_2_before_anything_runs(tiny_data, tiny_model_json, tmp_path):
    """``train.logger=wandb`` where wandb cannot be imported (hidden here by a sitecustomize): refused by
    preflight, nothing written."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    run_dir = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({"backend": "mace", "task": "train", "run_dir": str(run_dir), "device": "cpu",
                                   "data": {k: str(v) for k, v in tiny_data.items()},
                                   "train": {"input_json": str(tiny_model_json), "logger": "wandb"}}))
    env = dict(os.environ, PYTHONPATH=str(hide), MLIP_FAIRCHEM_PREWARM="0")
    out = subprocess.run([str(Path(sys.executable).with_name("launch-run")), "--config", str(cfg)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.splitlines() if "train.logger" in x]
    assert len(lines) == 1 and "wandb is not installed" in lines[0] and "mlip-launch[wandb]" in lines[0]
    assert not run_dir.exists()
