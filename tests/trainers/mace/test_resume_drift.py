"""Exact resume, fast, with a model that drifts: a mistake in what a resume restores shows in the weights.

The resume tests of test_resume.py train a tiny model; this one trains a larger one (32 channels, L=1,
correlation 3) whose every piece of training state matters: Adam's moments (amsgrad), the EMA, a step
schedule that halves the lr each epoch, the position inside a shuffled epoch. It is stopped mid-epoch through
the trainer's own stop path (a preemption request), launched again, and must end bit-identical to the same
run made straight, in float32 and float64 (README: "Resume guarantee (MACE, CPU)").
"""
from __future__ import annotations

import json

import pytest

from .conftest import make_spec, run_preempted_after

pytestmark = pytest.mark.slow

DRIFTING_MODEL = {
    "model": "MACE", "num_channels": 32, "max_L": 1, "max_ell": 2, "correlation": 3, "num_interactions": 2,
    "r_max": 4.0, "num_radial_basis": 8, "radial_MLP": [32, 32], "MLP_irreps": "16x0e", "E0s": "average",
}
EPOCHS, UPDATES_PER_EPOCH = 3, 4   # 24 structures, batch 6
STOP_AT = 6                        # stop after the 6th update of 12 ...
STOP_POSITION = (1, 2)             # ... (epochs done, updates into the epoch): mid epoch 2


def _spec(run_dir, tiny_data, model_json, dtype):
    return make_spec(run_dir, tiny_data, train={
        "input_json": str(model_json), "epochs": EPOCHS, "batch_size": 6, "dtype": dtype, "lr": 0.02,
        "scheduler": "step", "ema_decay": 0.9, "log_every": 1, "max_grad_norm": None})


@pytest.fixture(scope="module")
def drifting_model_json(tmp_path_factory):
    p = tmp_path_factory.mktemp("drift-model") / "model.json"
    p.write_text(json.dumps(DRIFTING_MODEL))
    return p


def _run(spec, stop_after=None):
    """run_job; with ``stop_after``, a preemption request after that many updates (the trainer's stop path)."""
    from launcher.job import run_job

    if stop_after is None:
        return run_job(spec, echo=lambda *_: None)
    return run_preempted_after(spec, stop_after)


def _state(run_dir):
    import torch

    from launcher.core.atomic import read_jsonl

    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    best = torch.load(run_dir / "artifacts" / "best_model.pt", weights_only=True)
    losses = [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "logs" / "metrics.jsonl") if r["split"] == "train"]
    return ck, best, losses


def _differences(a, b):
    """Names of the pieces of state that are not bit-identical."""
    import torch

    (ck_a, best_a, loss_a), (ck_b, best_b, loss_b) = a, b
    out = [f"model.{k}" for k in ck_a["model"] if not torch.equal(ck_a["model"][k], ck_b["model"][k])]
    out += [f"best_model.{k}" for k in best_a if not torch.equal(best_a[k], best_b[k])]
    ema_a, ema_b = ck_a["ema"], ck_b["ema"]
    out += [f"ema.shadow[{i}]" for i, (x, y) in enumerate(zip(ema_a["shadow_params"], ema_b["shadow_params"]))
            if not torch.equal(x, y)]
    if ema_a["num_updates"] != ema_b["num_updates"]:
        out.append("ema.num_updates")
    for i, st in ck_a["optimizer"]["state"].items():
        out += [f"optimizer.state[{i}].{n}" for n, v in st.items()
                if not torch.equal(torch.as_tensor(v), torch.as_tensor(ck_b["optimizer"]["state"][i][n]))]
    if ck_a["scheduler"] != ck_b["scheduler"]:
        out.append("scheduler")
    if ck_a["optimizer"]["param_groups"][0]["lr"] != ck_b["optimizer"]["param_groups"][0]["lr"]:
        out.append("lr")
    for key in ("update_step", "epoch", "best_loss", "best_epoch"):
        if ck_a["loop"][key] != ck_b["loop"][key]:
            out.append(f"loop.{key}")
    if loss_a != loss_b:
        out.append("train losses (metrics.jsonl)")
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stopped_mid_epoch_and_resumed_ends_bit_identical(dtype, tiny_data, drifting_model_json, tmp_path):
    import torch

    straight = tmp_path / "straight"
    ref = _run(_spec(straight, tiny_data, drifting_model_json, dtype))
    assert ref.status == "finished"

    run_dir = tmp_path / "stopped"
    spec = _spec(run_dir, tiny_data, drifting_model_json, dtype)
    first = _run(spec, stop_after=STOP_AT)
    assert first.status == "preempted"
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert (ck["loop"]["epoch"], ck["loop"]["updates_in_epoch"]) == STOP_POSITION      # mid epoch, not at its end
    assert ck["ema"] is not None and ck["optimizer"]["state"]
    second = _run(spec)                                     # the same spec again: resumes
    assert second.status == "finished" and second.result["update_steps"] == EPOCHS * UPDATES_PER_EPOCH

    a, b = _state(straight), _state(run_dir)
    assert a[0]["model"]["node_embedding.linear.weight"].dtype == getattr(torch, dtype)
    assert _differences(a, b) == []


def test_the_model_drifts_a_resume_mistake_would_show(tiny_data, drifting_model_json, tmp_path):
    """The guard itself: a run that restarts its optimizer state at the stop point ends measurably elsewhere."""
    import torch

    from trainers.mace import loop

    straight = tmp_path / "straight"
    _run(_spec(straight, tiny_data, drifting_model_json, "float32"))
    run_dir = tmp_path / "fresh-optimizer"
    spec = _spec(run_dir, tiny_data, drifting_model_json, "float32")
    _run(spec, stop_after=STOP_AT)
    orig = loop.Trainer._load_training_state

    def forget_optimizer(self, ck):
        orig(self, {**ck, "optimizer": self.opt.state_dict()})

    loop.Trainer._load_training_state = forget_optimizer
    try:
        _run(spec)
    finally:
        loop.Trainer._load_training_state = orig
    a, b = _state(straight), _state(run_dir)
    assert any(d.startswith("model.") for d in _differences(a, b))
    w = [torch.cat([v.reshape(-1) for v in s[0]["model"].values()]) for s in (a, b)]
    assert float((w[0] - w[1]).abs().max()) > 1e-4 * float(w[0].abs().max())   # not a rounding difference
