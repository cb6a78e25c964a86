"""What the README promises of the FairChem backends, proved on real runs (equiformer_v2 and gemnet_oc, slow).

- a fine-tune starts from the given weights: its first validation equals an evaluate of the base model;
- task=export writes exactly the checkpoint's weights (best_model.pt and artifacts/fairchem_checkpoint.pt);
- task=resume with more train.epochs continues a finished run (epochs, steps and metrics go on, no restart).

One tiny base run per backend (10 training structures, 2 steps an epoch, progress every step) feeds them all.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest

from launcher.core.layout import RunLayout
from launcher.core.schema import IndexSampling
from trainers.fairchem.checkpoints import NATIVE_CHECKPOINT

from .test_end_to_end import make_spec, run

pytestmark = [pytest.mark.slow, pytest.mark.fairchem]

BACKENDS = ["equiformer_v2", "gemnet_oc"]
BASE_KEYS = {"data.train_indices": IndexSampling(max_samples=10), "train.log_every": 1}


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _bare(state_dict: Dict[str, object]) -> Dict[str, object]:
    """A state dict without DistributedDataParallel's 'module.' prefix (what best_model.pt holds)."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def assert_same_tensors(ours: Dict[str, object], theirs: Dict[str, object]) -> None:
    import torch

    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape, k
        assert torch.equal(ours[k], theirs[k]), k


def _records(layout: RunLayout) -> list:
    return [json.loads(x) for x in layout.metrics_jsonl.read_text().splitlines()]


class Base(dict):
    """base[backend] -> run dir of a finished 2-epoch training, made on first use."""

    def __init__(self, data, root):
        super().__init__()
        self.data, self.root = data, root

    def __missing__(self, backend):
        run_dir = self.root / backend
        res, _ = run(make_spec(run_dir, backend, self.data, **BASE_KEYS))
        assert res.status == "finished" and res.result["epochs_done"] == 2, res.message
        self[backend] = run_dir
        return run_dir


@pytest.fixture(scope="module")
def base(fairchem_python, fairchem_fixtures, demo_data, tmp_path_factory):
    return Base(demo_data, tmp_path_factory.mktemp("fc-promises"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_finetunes_first_validation_equals_an_evaluate_of_the_base_model(base, demo_data, tmp_path, backend):
    """FairChem validates only after an optimizer step (``step % eval_every`` is checked after the update), so
    there is no validation at step 0. A fine-tune with lr 0 (backend_args --optim.lr_initial=0; AdamW's update
    and its weight decay are both scaled by the lr, so the weights do not move) over one step validates the
    weights it started from. Proved twice: its weights after that step are the base's, tensor for tensor; and its
    validation (full-precision metrics FairChem stores in the best checkpoint) equals our evaluate of the base
    model on the same val split. The two sides are different code paths (FairChem's evaluator inside
    the training loop, our metrics from the predictions of a separate FairChem predict run), both float32
    forward passes of the same weights on the same structures; only batching and summation order differ
    (measured: rel 3e-9 to 3e-8 on both backends, float32 eps is 1.2e-7), hence rel 1e-6.
    """
    src = RunLayout.of(base[backend])
    start = src.artifact(NATIVE_CHECKPOINT)                     # artifacts/fairchem_checkpoint.pt
    res, _ = run(make_spec(tmp_path / "eval", backend, demo_data, task="evaluate", config=False, epochs=None,
                           model_in=str(start), **{"eval.split": "val"}))
    assert res.status == "finished", res.message
    ours = json.loads((RunLayout.of(tmp_path / "eval").eval_dir / "metrics.json").read_text())
    assert ours["n_structures"] == 16

    ft = RunLayout.of(tmp_path / "ft")
    res, _ = run(make_spec(ft.root, backend, demo_data, task="finetune", config=False, epochs=1,
                           args=["--optim.lr_initial=0"], model_in=str(start),
                           **{"data.train_indices": IndexSampling(max_samples=5)}))   # one step of batch 5
    assert res.status == "finished" and res.result["epochs_done"] == 1, res.message
    assert_same_tensors(_load(ft.best_model), _load(src.best_model))
    theirs = json.loads(ft.manifest.read_text())
    assert theirs["fairchem"]["step"] == 1                                  # the first (and only) validation
    val = [r for r in _records(ft) if r["split"] == "val"]
    assert len(val) == 1
    assert val[0]["energy_mae"] == pytest.approx(theirs["metrics"]["energy_mae"], abs=1e-4)  # the log: 4 decimals
    assert ours["energy_mae"] == pytest.approx(theirs["metrics"]["energy_mae"], rel=1e-6)
    assert ours["force_mae"] == pytest.approx(theirs["metrics"]["forces_mae"], rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_writes_exactly_the_checkpoints_weights(base, demo_data, tmp_path, backend):
    """task=export of the run's last checkpoint (not the best): best_model.pt is its state dict, bare, tensor for
    tensor, and artifacts/fairchem_checkpoint.pt is the checkpoint itself; the training's own artifacts
    are likewise its best checkpoint's weights."""
    src = RunLayout.of(base[backend])
    last = _load(src.checkpoint)
    best = _load(src.best_checkpoint)
    out = RunLayout.of(tmp_path / "export")
    res, _ = run(make_spec(out.root, backend, demo_data, task="export", config=False, epochs=None,
                           model_in=str(src.checkpoint)))
    assert res.status == "finished", res.message
    assert_same_tensors(_load(out.best_model), _bare(last["state_dict"]))
    assert_same_tensors(_load(out.artifact(NATIVE_CHECKPOINT))["state_dict"], last["state_dict"])
    assert _load(out.artifact(NATIVE_CHECKPOINT))["step"] == last["step"]
    m = json.loads(out.manifest.read_text())
    assert m["fairchem"]["best"] is False and m["fairchem"]["weights"] == "checkpoint"
    assert m["fairchem"]["step"] == last["step"]

    assert_same_tensors(_load(src.best_model), _bare(best["state_dict"]))
    assert_same_tensors(_load(src.artifact(NATIVE_CHECKPOINT))["state_dict"], best["state_dict"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_with_more_epochs_continues_a_finished_run(fairchem_python, fairchem_fixtures, demo_data, tmp_path, backend):
    """A finished 2-epoch run resumed in place (the same keys, task=resume, train.epochs=3) trains the third
    epoch only: the checkpoint's step goes on from where it was, the progress records appended to
    metrics.jsonl start at the next step, a new validation is appended, and the run's weights change.
    Its own run (not the shared base): resuming changes the run directory."""
    run_dir = tmp_path / "run"
    res, _ = run(make_spec(run_dir, backend, demo_data, **BASE_KEYS))
    assert res.status == "finished" and res.result["epochs_done"] == 2, res.message
    layout = RunLayout.of(run_dir)
    before = _load(layout.checkpoint)
    n_records = len(_records(layout))
    steps_before = [r["step"] for r in _records(layout) if r.get("kind") == "progress"]
    assert steps_before == [1, 2, 3, 4] and before["step"] == 4                 # 10 structures, batch 5

    res, _ = run(make_spec(run_dir, backend, demo_data, task="resume", epochs=3, **BASE_KEYS))
    assert res.status == "finished" and res.result["epochs_done"] == 3, res.message
    after = _load(layout.checkpoint)
    assert after["step"] == 6 and float(after["epoch"]) == pytest.approx(3.0)
    new = _records(layout)[n_records:]
    assert [r["step"] for r in new if r.get("kind") == "progress"] == [5, 6]  # no step 1 again: no restart
    assert [r for r in new if r["split"] == "val"]
    import torch

    assert any(not torch.equal(after["state_dict"][k], before["state_dict"][k]) for k in before["state_dict"])
    log = next(layout.logs.glob("fairchem-resume-*.log")).read_text()
    assert "Loading checkpoint from" in log
    assert json.loads(layout.state_json.read_text())["status"] == "finished"
