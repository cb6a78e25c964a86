"""``artifacts/best_model.pt`` holds the weights of the best validation epoch, not of a later, worse one.

The validation set is designed to get worse after a few epochs: the training structures with their forces
scaled by 0.3. Training on the true forces, the model passes 0.3 x F on its way to F, so the val loss falls
for a few epochs, then rises (deterministic on CPU: same seed, same updates).
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from .conftest import make_spec, run_with_hook

pytestmark = pytest.mark.slow

EPOCHS = 6


@pytest.fixture(scope="module")
def worsening_val(tiny_data, tmp_path_factory):
    from data.lmdb_dataset import LmdbDataset
    from data.writer import write_lmdb

    ds = LmdbDataset(str(tiny_data["train"]))
    try:
        scaled = [dataclasses.replace(ds[i], forces=ds[i].forces * 0.3) for i in range(len(ds))]
    finally:
        ds.close()
    return write_lmdb(scaled, tmp_path_factory.mktemp("worse") / "val.lmdb", progress=False)[0]


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_model_json, worsening_val, tmp_path_factory):
    """A run whose val loss worsens after its best epoch, with the weights after every evaluation."""
    import torch

    run_dir = tmp_path_factory.mktemp("best") / "run"
    spec = make_spec(run_dir, {"train": tiny_data["train"], "val": worsening_val},
                     train={"input_json": str(tiny_model_json), "epochs": EPOCHS, "lr": 0.01, "scheduler": "none"})
    weights = {}

    def keep(tr):   # the weights after each evaluation
        weights[tr.state.epoch] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}

    result = run_with_hook(spec, "evaluate_point", keep)
    assert result.status == "finished"
    return run_dir, weights, torch.load(run_dir / "artifacts" / "best_model.pt", weights_only=True)


def _val_losses(run_dir):
    from launcher.core.atomic import read_jsonl

    return {r["epoch"]: r for r in read_jsonl(run_dir / "logs" / "metrics.jsonl") if r["split"] == "val"}


def test_validation_worsens_after_an_inner_best_epoch(trained):
    run_dir, _, _ = trained
    val = _val_losses(run_dir)
    assert sorted(val) == list(range(1, EPOCHS + 1))
    best = min(val, key=lambda e: val[e]["loss"])
    assert 1 < best < EPOCHS - 1, f"the designed data should improve, then worsen (best epoch {best})"
    assert all(val[e]["loss"] > val[best]["loss"] for e in range(best + 1, EPOCHS + 1))


def test_best_model_is_the_best_epochs_weights_and_the_manifest_says_so(trained):
    import torch

    from launcher.core.layout import read_manifest

    run_dir, weights, best_pt = trained
    val = _val_losses(run_dir)
    best = min(val, key=lambda e: val[e]["loss"])
    assert sorted(weights) == list(range(1, EPOCHS + 1))
    assert best_pt.keys() == weights[best].keys()
    assert all(torch.equal(best_pt[k], weights[best][k]) for k in best_pt), "best_model.pt is not the best epoch's"
    assert not all(torch.equal(best_pt[k], weights[EPOCHS][k]) for k in best_pt)
    m = read_manifest(run_dir / "artifacts" / "manifest.json")
    assert m["best_epoch"] == best
    assert m["metrics"]["loss"] == pytest.approx(val[best]["loss"], rel=1e-12)
    assert m["metrics"]["force_rmse"] == pytest.approx(val[best]["force_rmse"], rel=1e-12)
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert (ck["loop"]["best_epoch"], ck["loop"]["best_loss"]) == (best, val[best]["loss"])


def test_evaluating_the_best_model_gives_the_best_epochs_errors(trained, tiny_data, worsening_val, tmp_path):
    """The exported model, evaluated again on the val set, has the best epoch's errors, not the last one's."""
    from launcher.job import run_job

    run_dir, _, _ = trained
    val = _val_losses(run_dir)
    best = min(val, key=lambda e: val[e]["loss"])
    ev = make_spec(tmp_path / "ev", {"train": tiny_data["train"], "test": worsening_val}, task="evaluate",
                   model_in=str(run_dir / "artifacts" / "manifest.json"))
    run_job(ev, echo=lambda *_: None)
    got = json.loads((tmp_path / "ev" / "eval" / "metrics.json").read_text())
    assert got["force_rmse"] == pytest.approx(val[best]["force_rmse"], rel=1e-4)
    assert got["force_rmse"] != pytest.approx(val[EPOCHS]["force_rmse"], rel=1e-2)
