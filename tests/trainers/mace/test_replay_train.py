"""data.replay in real fine-tunes of a real mace-torch model on real LMDBs: the weight acts on the loss (0 is
no replay at all), replay errors are reported on their own, the selection is cached and a preempted run
resumes bit for bit, fps selects on the model's descriptors, and elements the model lacks are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import TINY_MODEL, make_spec, run_preempted_after, run_two_ranks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model(tiny_data, tmp_path_factory):
    """An (untrained) tiny MACE .model with statistics from the training split, float32."""
    import torch

    from data.lmdb_dataset import LmdbDataset
    from trainers.mace.model_config import build_model, check_model_config, resolve

    ds = LmdbDataset(tiny_data["train"])
    torch.set_default_dtype(torch.float32)
    try:
        cfg = resolve(check_model_config(dict(TINY_MODEL)), [ds[i] for i in range(len(ds))])
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("replay-base") / "base.model"
        torch.save(build_model(cfg), path)
    finally:
        torch.set_default_dtype(torch.float64)
    return path


def _finetune(run_dir, tiny_data, base_model, replay=None, **train):
    data = {"replay": {"paths": [str(tiny_data["test"])], "max_samples": 4, "val_samples": 2, **replay}} \
        if replay is not None else {}
    return make_spec(run_dir, {k: tiny_data[k] for k in ("train", "val")}, task="finetune", model_in=str(base_model),
                     data=data, train={"epochs": 2, "lr": 0.01, **train})


def _weights(run_dir):
    import torch

    return torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)["model"]


def test_weight_zero_is_no_replay_and_a_weight_changes_training(base_model, tiny_data, tmp_path):
    import torch

    from launcher.core.atomic import read_jsonl
    from launcher.job import run_job

    runs = {"none": None, "zero": {"weight": 0.0}, "one": {"weight": 1.0}}
    for name, replay in runs.items():
        assert run_job(_finetune(tmp_path / name, tiny_data, base_model, replay), echo=lambda *_: None).status == "finished"
    none, zero, one = (_weights(tmp_path / n) for n in runs)
    assert all(torch.equal(none[k], zero[k]) for k in none)            # weight 0: exactly no replay loss
    assert any(not torch.equal(none[k], one[k]) for k in none if none[k].is_floating_point())

    run = tmp_path / "one"
    replay = [r for r in read_jsonl(run / "logs" / "metrics.jsonl") if r["split"] == "replay"]
    assert [r["epoch"] for r in replay] == [1, 2] and all(r["force_rmse"] > 0 for r in replay)
    log = (run / "logs" / "train.log").read_text()
    assert "replay: 4 structures selected (random)" in log and "joined by 2 replay structures" in log
    assert "eval replay epoch=2" in log
    sel = json.loads((run / "replay" / "selection.json").read_text())
    assert len(sel["train"]) == 4 and len(sel["val"]) == 2
    assert not {tuple(r) for r in sel["train"]} & {tuple(r) for r in sel["val"]}   # held out means held out
    assert (run / "logs" / "curves.png").is_file()


def test_preempted_replay_finetune_resumes_bit_identical(base_model, tiny_data, tmp_path):
    import torch

    from launcher.job import run_job

    replay = {"ratio": 0.75, "weight": 0.5}
    ref = tmp_path / "ref"
    run_job(_finetune(ref, tiny_data, base_model, replay, epochs=3), echo=lambda *_: None)
    run = tmp_path / "run"
    spec = _finetune(run, tiny_data, base_model, replay, epochs=3)
    assert run_preempted_after(spec, 8).status == "preempted"      # mid epoch 2 (6 updates per epoch)
    ck = torch.load(run / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["loop"]["replay_batches"] == 8              # the replay stream's position is checkpointed
    assert run_job(spec, echo=lambda *_: None).status == "finished"
    assert "replay: selection reused" in (run / "logs" / "train.log").read_text()
    a, b = _weights(ref), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fps_selects_on_the_model_descriptors_and_caches(base_model, tiny_data, tmp_path):
    from launcher.job import run_job
    from trainers.mace import replay as rp

    spec = _finetune(tmp_path / "fps", tiny_data, base_model, {"select": "fps", "max_samples": 3, "val_samples": 1},
                     epochs=1)
    assert run_job(spec, echo=lambda *_: None).status == "finished"
    sel = json.loads((tmp_path / "fps" / "replay" / "selection.json").read_text())
    log = (tmp_path / "fps" / "logs" / "train.log").read_text()
    assert "descriptors of 7 candidates" in log and "3 structures selected (fps) from 7 candidates" in log
    # the random choice of the same pool would be its first 3 candidates; fps starts there and then goes far
    val, cand = rp.draw(8, 1, spec.data.replay.pool, spec.effective_seed)
    assert sel["train"][0] == [0, int(cand[0])] and len({tuple(r) for r in sel["train"]}) == 3
    assert rp.fingerprint(spec) == sel["key"]


def test_replay_elements_the_model_lacks_are_refused_before_training(base_model, tiny_data, tmp_path):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from data.convert import atoms_to_structure
    from data.writer import write_lmdb
    from launcher.preflight import check_spec

    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.calc = EMT()
    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    bad = tmp_path / "al.lmdb"
    write_lmdb([atoms_to_structure(atoms, 0, "energy", "forces", None, tmp_path)], bad)
    spec = _finetune(tmp_path / "run", tiny_data, base_model, {})
    spec.data.replay.paths = [str(tiny_data["test"]), str(bad)]
    problems = [p for p in check_spec(spec) if p.startswith("data.replay")]
    assert len(problems) == 1 and problems[0].startswith(f"data.replay.paths[1]: {bad}: entry 0 holds Al")
    assert not (tmp_path / "run").exists()
    np.testing.assert_equal(len(check_spec(_finetune(tmp_path / "ok", tiny_data, base_model, {}))), 0)
    # the job checks every selected record again (preflight reads a sample of each file)
    from launcher.core.errors import ConfigError
    from trainers.mace.replay import check_elements

    with pytest.raises(ConfigError, match=r"^data\.replay\.paths\[1\] \(.*al\.lmdb\): entry 0 holds Al"):
        check_elements([str(tiny_data["test"]), str(bad)], np.array([[0, 1], [1, 0]]), [28, 29, 46, 47, 78, 79], False)


def test_two_process_replay_finetune_keeps_ranks_equal(base_model, tiny_data, tmp_path):
    """Two gloo processes: each rank replays its own slice of the stream, gradients are averaged once per update
    (after the replay pass), the ranks end with the same weights and one rank writes the replay records."""
    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout

    run_dir = tmp_path / "ddp"
    run_two_ranks(_finetune(run_dir, tiny_data, base_model, {"weight": 0.5}), tmp_path)
    lay = RunLayout.of(run_dir)
    state = json.loads(lay.state_json.read_text())
    assert state["status"] == "finished"
    digests = state["result"]["weights_sha256_by_rank"]
    assert len(digests) == 2 and len(set(digests)) == 1
    assert [r["epoch"] for r in read_jsonl(lay.metrics_jsonl) if r["split"] == "replay"] == [1, 2]
    assert lay.train_log.read_text().count("replay: 4 structures selected") == 1


def test_replay_on_the_resume_of_a_from_scratch_training_is_refused(tiny_data, tiny_model_json, tmp_path):
    from launcher.core.errors import ConfigError
    from launcher.job import run_job

    src = tmp_path / "scratch"
    spec = make_spec(src, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 1})
    assert run_job(spec, echo=lambda *_: None).status == "finished"
    resume = make_spec(tmp_path / "more", tiny_data, task="resume", model_in=str(src / "checkpoints" / "checkpoint.pt"),
                       data={"replay": {"paths": [str(tiny_data["test"])]}}, train={"epochs": 2})
    with pytest.raises(ConfigError, match=r"^data\.replay\.paths: replay is for fine-tunes; .*checkpoint\.pt continues "
                                          r"a model trained from scratch"):
        run_job(resume, echo=lambda *_: None)
    assert not (tmp_path / "more" / "replay").exists()
