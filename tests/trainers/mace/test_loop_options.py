"""Loop knobs: cycles + accumulation + per-cycle scheduler + patience; NaN stops and keeps the checkpoint."""
from __future__ import annotations

import json

import pytest

from .conftest import make_spec

pytestmark = pytest.mark.slow


def test_cycles_accumulation_scheduler_and_patience(tiny_data, tiny_model_json, tmp_path):
    import torch

    from launcher.job import run_job
    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout

    run_dir = tmp_path / "cyc"
    spec = make_spec(run_dir, tiny_data, train={
        "input_json": str(tiny_model_json), "epochs": 3, "batch_size": 4, "accum_steps": 2, "drop_last": True,
        "cycle_steps": 2, "scheduler": "cosine", "scheduler_step_unit": "cycle", "optimizer": "adamw",
        "patience": 1000, "save_every": 2, "lr": 0.002})
    result = run_job(spec, echo=lambda *_: None)
    lay = RunLayout.of(run_dir)
    recs = read_jsonl(lay.metrics_jsonl)
    val = [r for r in recs if r["split"] == "val"]
    # 24 structures / batch 4 = 6 micro-batches = 3 updates per epoch; 9 updates = 4 cycles of 2
    assert [r["step"] for r in val] == [2, 4, 6, 8] and [r["cycle"] for r in val] == [1, 2, 3, 4]
    lrs = [r["lr"] for r in val]
    assert lrs[0] == pytest.approx(0.002) and lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    ck = torch.load(lay.checkpoint, weights_only=True)
    assert ck["loop"]["update_step"] == 9 and result.result["epochs_done"] == 3


def test_patience_stops_early(tiny_data, tiny_model_json, tmp_path):
    from launcher.job import run_job

    spec = make_spec(tmp_path / "pat", tiny_data, train={"input_json": str(tiny_model_json), "epochs": 6,
                                                       "lr": 1e-30, "optimizer": "sgd", "patience": 1,
                                                       "scheduler": "none", "weight_decay": 0.0})
    result = run_job(spec, echo=lambda *_: None)
    # with a vanishing lr the val loss stops improving at once: stopped after two evaluations
    assert result.result["epochs_done"] < 6 and "patience" in result.result["stopped_early"]


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tiny_data, tiny_model_json, tmp_path):
    import torch

    from launcher.job import run_job
    from trainers.mace import loop

    run_dir = tmp_path / "nan"
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 3})
    orig = loop.Trainer._update
    calls = {"n": 0}

    def poisoned(self, micro):
        calls["n"] += 1
        if calls["n"] == 8:                                  # epoch 2, after epoch 1's checkpoint
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return orig(self, micro)

    loop.Trainer._update = poisoned
    try:
        with pytest.raises(loop.TrainingDiverged, match="loss is nan at epoch 2"):
            run_job(spec, echo=lambda *_: None)
    finally:
        loop.Trainer._update = orig
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["loop"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert json.loads((run_dir / "state.json").read_text())["status"] == "failed"
