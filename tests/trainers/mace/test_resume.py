"""Exact resume: a killed (kill -9) or preempted run, launched again, ends bit-identical on CPU."""
from __future__ import annotations

import json
import os
import signal

import pytest

from .conftest import kill_training_at, make_spec

pytestmark = pytest.mark.slow



def _train_over(tiny_model_json, **extra):
    train = {"input_json": str(tiny_model_json), "epochs": 3, "log_every": 1, "lr": 0.005,
             "scheduler": "cosine", "ema_decay": 0.8}
    train.update(extra)
    return {"train": train}


def _final_state(run_dir):
    import torch

    ck = torch.load(os.path.join(run_dir, "checkpoints", "checkpoint.pt"), weights_only=True)
    best = torch.load(os.path.join(run_dir, "artifacts", "best_model.pt"), weights_only=True)
    return ck, best


def _assert_identical(a, b):
    import torch

    (ck_a, best_a), (ck_b, best_b) = a, b
    for k in ck_a["model"]:
        assert torch.equal(ck_a["model"][k], ck_b["model"][k]), k
    for k in best_a:
        assert torch.equal(best_a[k], best_b[k]), k
    assert ck_a["loop"]["best_loss"] == ck_b["loop"]["best_loss"]
    assert ck_a["loop"]["update_step"] == ck_b["loop"]["update_step"]
    sa, sb = ck_a["optimizer"]["state"], ck_b["optimizer"]["state"]
    for i in sa:
        for name in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][name]), torch.as_tensor(sb[i][name]))


@pytest.fixture(scope="module")
def reference(tiny_data, tiny_model_json, tmp_path_factory):
    from launcher.job import run_job

    run_dir = tmp_path_factory.mktemp("ref") / "run"
    run_job(make_spec(run_dir, tiny_data, **_train_over(tiny_model_json)), echo=lambda *_: None)
    return _final_state(run_dir)


def test_kill9_then_relaunch_is_bit_identical(reference, tiny_data, tiny_model_json, tmp_path):
    from launcher.job import run_job
    from launcher.core.atomic import read_jsonl

    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_data, **_train_over(tiny_model_json))
    # 6 updates per epoch: kill in the middle of epoch 2, after epoch 1's checkpoint
    returncode = kill_training_at(spec, run_dir, 8)
    metrics = run_dir / "logs" / "metrics.jsonl"
    assert returncode == -signal.SIGKILL
    assert json.loads((run_dir / "state.json").read_text())["status"] == "running"

    result = run_job(spec, echo=lambda *_: None)       # same spec again: resumes
    assert result.status == "finished" and result.result["epochs_done"] == 3
    _assert_identical(reference, _final_state(run_dir))
    steps = [r["step"] for r in read_jsonl(metrics) if r["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 18   # the killed attempt's extra lines are gone
    assert [r["epoch"] for r in read_jsonl(metrics) if r["split"] == "val"] == [1, 2, 3]


def test_preempted_mid_epoch_then_resume_task_is_bit_identical(reference, tiny_data, tiny_model_json, tmp_path):
    from launcher.core import preemption
    from launcher.job import run_job
    from trainers.mace import loop

    run_dir = tmp_path / "run"
    spec = make_spec(run_dir, tiny_data, **_train_over(tiny_model_json))
    calls = {"n": 0}
    orig = loop.Trainer._update

    def update_then_preempt(self, micro):
        out = orig(self, micro)
        calls["n"] += 1
        if calls["n"] == 9:                 # mid epoch 2
            preemption.request_preemption()
        return out

    loop.Trainer._update = update_then_preempt
    try:
        first = run_job(spec, echo=lambda *_: None)
    finally:
        loop.Trainer._update = orig
        preemption.reset()
    assert first.status == "preempted"
    import torch

    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert (ck["loop"]["epoch"], ck["loop"]["updates_in_epoch"]) == (1, 3)
    resume = make_spec(run_dir, tiny_data, task="resume", **_train_over(tiny_model_json))
    second = run_job(resume, echo=lambda *_: None)
    assert second.status == "finished"
    _assert_identical(reference, _final_state(run_dir))
    from launcher.core.atomic import read_jsonl

    shares = read_jsonl(run_dir / "logs" / "shares.jsonl")      # epoch 2's record written once, not twice
    assert [(r["epoch"], r["rank"], r["n"]) for r in shares] == [(1, 0, 24), (2, 0, 24), (3, 0, 24)]
