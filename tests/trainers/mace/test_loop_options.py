"""Loop knobs: cycles + accumulation + per-cycle scheduler; train.patience (the plateau scheduler's patience)
and train.early_stop_factor (stop after factor x patience evaluations without improvement); the log_every
progress line; progress_mininterval on every bar; NaN stops and keeps the checkpoint."""
from __future__ import annotations

import json

import pytest

from .conftest import make_spec

pytestmark = pytest.mark.slow


def test_cycles_accumulation_and_per_cycle_scheduler(tiny_data, tiny_model_json, tmp_path):
    import torch

    from launcher.job import run_job
    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout

    run_dir = tmp_path / "cyc"
    spec = make_spec(run_dir, tiny_data, train={
        "input_json": str(tiny_model_json), "epochs": 3, "batch_size": 4, "accum_steps": 2, "drop_last": True,
        "cycle_steps": 2, "scheduler": "cosine", "scheduler_step_unit": "cycle", "optimizer": "adamw",
        "save_every": 2, "lr": 0.002})
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


# With a vanishing lr (sgd, no weight decay) float32 weights do not move: every evaluation after the
# first gives the same val loss, i.e. no improvement. 24 structures / batch 4 = 6 updates per epoch.
FROZEN = {"lr": 1e-30, "optimizer": "sgd", "weight_decay": 0.0}


def _val_lrs(run_dir):
    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout

    return [r["lr"] for r in read_jsonl(RunLayout.of(run_dir).metrics_jsonl) if r["split"] == "val"]


def test_patience_is_the_plateau_schedulers_patience_and_does_not_stop(tiny_data, tiny_model_json, tmp_path):
    import torch

    from launcher.job import run_job

    spec = make_spec(tmp_path / "pat", tiny_data, train={"input_json": str(tiny_model_json), "epochs": 6,
                                                       "scheduler": "plateau", "patience": 1, **FROZEN})
    result = run_job(spec, echo=lambda *_: None)
    assert result.result["epochs_done"] == 6 and result.result["stopped_early"] is None  # patience alone never stops
    # eval 1 improves; evals 2, 3 do not: after the 2nd bad one (> patience 1) the lr drops by 0.8, and again
    # after every 2 more (the val record shows the lr the evaluation ran with, before the scheduler steps)
    lrs = _val_lrs(tmp_path / "pat")
    assert lrs == pytest.approx([1e-30, 1e-30, 1e-30, 0.8e-30, 0.8e-30, 0.64e-30], rel=1e-6)
    ck = torch.load(tmp_path / "pat" / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["scheduler"]["patience"] == 1


def test_patience_null_is_mace_run_trains_50(tiny_data, tiny_model_json, tmp_path):
    import torch

    from launcher.job import run_job

    spec = make_spec(tmp_path / "p50", tiny_data, train={"input_json": str(tiny_model_json), "epochs": 1,
                                                       "scheduler": "plateau", **FROZEN})
    run_job(spec, echo=lambda *_: None)
    ck = torch.load(tmp_path / "p50" / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["scheduler"]["patience"] == 50


@pytest.mark.parametrize("factor, patience, scheduler, epochs_done", [
    (1.0, 1, "plateau", 2),     # 1 x 1: the first evaluation without improvement stops
    (1.5, 2, "plateau", 4),     # ceil(1.5 x 2) = 3 bad evaluations after the first (improving) one
    (2.0, 2, "none", 5),        # 4 bad evaluations; the unit is train.patience whatever the scheduler
])
def test_early_stop_factor_times_patience(tiny_data, tiny_model_json, tmp_path, factor, patience, scheduler,
                                          epochs_done):
    from launcher.core.layout import RunLayout
    from launcher.job import run_job

    run_dir = tmp_path / "es"
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 8,
                                                "scheduler": scheduler, "patience": patience,
                                                "early_stop_factor": factor, **FROZEN})
    result = run_job(spec, echo=lambda *_: None)
    assert result.result["epochs_done"] == epochs_done
    assert result.result["stopped_early"].startswith(f"early_stop_factor: {epochs_done - 1} evaluations without val")
    assert len(_val_lrs(run_dir)) == epochs_done
    assert "stopping early (early_stop_factor" in RunLayout.of(run_dir).train_log.read_text()


def test_early_stop_factor_does_not_stop_an_improving_run(tiny_data, tiny_model_json, tmp_path):
    """The old meaning ("stop when val loss > factor x best") is gone: a factor of 1 with a patience of 3
    tolerates two evaluations without improvement."""
    from launcher.job import run_job

    spec = make_spec(tmp_path / "imp", tiny_data, train={"input_json": str(tiny_model_json), "epochs": 3,
                                                       "patience": 3, "early_stop_factor": 1.0, "lr": 0.005})
    result = run_job(spec, echo=lambda *_: None)
    assert result.result["epochs_done"] == 3 and result.result["stopped_early"] is None


def test_log_every_prints_one_progress_line_per_n_updates(tiny_data, tiny_model_json, tmp_path, capfd):
    import re

    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout
    from launcher.job import run_job

    run_dir = tmp_path / "log"
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 2, "log_every": 4,
                                                "lr": 0.003})
    run_job(spec, echo=lambda *_: None)
    pattern = re.compile(r"train step=(\d+) epoch=(\d)/2 loss=(\S+) lr=0\.003 throughput=(\S+) structures/s data_wait=\d+\.\d%$")
    lay = RunLayout.of(run_dir)
    logged = [m for m in map(pattern.search, lay.train_log.read_text().splitlines()) if m]
    # 6 updates per epoch, 12 in all: steps 4, 8, 12 (epochs 1, 2, 2)
    assert [(int(m[1]), int(m[2])) for m in logged] == [(4, 1), (8, 2), (12, 2)]
    assert all(float(m[4]) > 0 for m in logged)
    console = [ln for ln in capfd.readouterr().err.splitlines() if pattern.search(ln)]
    assert len(console) == 3
    # metrics.jsonl keeps its train records, one per line, with the same loss
    train = [r for r in read_jsonl(lay.metrics_jsonl) if r["split"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 12] and set(train[0]) == {"time", "epoch", "step", "split", "loss", "lr", "throughput", "data_wait"}
    # the console's 4 significant digits of the full-precision loss in metrics.jsonl
    from launcher.core.metrics import sig

    assert [sig(r["loss"]) for r in train] == [m[3] for m in logged]
    assert all(len(m[4].replace(".", "").lstrip("0")) >= 4 for m in logged)


def test_progress_mininterval_reaches_every_bar(tiny_data, tiny_model_json, tmp_path, monkeypatch):
    import io

    import tqdm as tqdm_module

    from launcher.core.layout import RunLayout
    from launcher.job import run_job

    seen = []
    real = tqdm_module.tqdm

    class Recording(real):
        def __init__(self, *a, **kw):
            seen.append((kw.get("desc"), kw.get("mininterval")))
            kw["file"] = io.StringIO()
            super().__init__(*a, **kw)

    monkeypatch.setattr(tqdm_module, "tqdm", Recording)
    spec = make_spec(tmp_path / "bars", tiny_data, train={"input_json": str(tiny_model_json), "epochs": 1,
                                                        "progress_bar": "true", "progress_mininterval": 7.25})
    run_job(spec, echo=lambda *_: None)
    ev = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model_in=str(RunLayout.of(tmp_path / "bars").manifest),
                   train={"progress_bar": "true", "progress_mininterval": 7.25})
    run_job(ev, echo=lambda *_: None)
    descs = [d for d, _ in seen]
    # no "graphs" bar: the cache fills as the first epoch streams, under that epoch's bar
    for want in ("statistics sample", "epoch 1/1", "evaluate"):
        assert want in descs, descs
    assert {mi for _, mi in seen} == {7.25}, seen


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
        with pytest.raises(loop.TrainingDiverged, match="loss is not finite at epoch 2 .* the last good checkpoint .* is kept"):
            run_job(spec, echo=lambda *_: None)
    finally:
        loop.Trainer._update = orig
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["loop"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert json.loads((run_dir / "state.json").read_text())["status"] == "failed"


def test_resume_with_more_epochs_stretches_the_cosine_schedule(tiny_data, tiny_model_json, tmp_path):
    """A finished cosine run ends at lr 0; resumed to more epochs it continues on the schedule planned for the
    new length instead of training the extra epochs at lr 0."""
    import math

    from launcher.core.atomic import read_jsonl
    from launcher.job import run_job

    run_dir = tmp_path / "cos"
    over = {"input_json": str(tiny_model_json), "scheduler": "cosine", "lr": 0.004}
    run_job(make_spec(run_dir, tiny_data, train={**over, "epochs": 2}), echo=lambda *_: None)
    result = run_job(make_spec(run_dir, tiny_data, task="resume", train={**over, "epochs": 4}), echo=lambda *_: None)
    assert result.status == "finished"
    val = [r for r in read_jsonl(run_dir / "logs" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3, 4]
    # the lr recorded at an epoch's evaluation is the one that epoch trained with
    assert val[1]["lr"] == pytest.approx(0.5 * 0.004 * (1 + math.cos(math.pi * 1 / 2)))
    assert val[2]["lr"] == pytest.approx(0.5 * 0.004 * (1 + math.cos(math.pi * 2 / 4)))
    assert val[3]["lr"] == pytest.approx(0.5 * 0.004 * (1 + math.cos(math.pi * 3 / 4)))
    assert "cosine schedule stretched from 2 to 4 steps" in (run_dir / "logs" / "train.log").read_text()


def test_torch_threads_come_from_the_job_as_a_value(monkeypatch):
    """The trainer takes the job's thread count from ctx.extra["threads"], not from the environment."""
    import torch

    from trainers.mace.loop import set_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    try:
        set_threads(None)                       # no value: torch's own choice stays, the environment is not read
        assert torch.get_num_threads() == before
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
