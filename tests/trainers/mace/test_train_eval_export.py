"""End to end through launcher.job.run_job: train -> layout, evaluate, infer, export, MACECalculator."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from launcher.core.atomic import read_jsonl

from .conftest import make_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_model_json, tmp_path_factory):
    from launcher.job import run_job

    run_dir = tmp_path_factory.mktemp("mace-train") / "run"
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 2, "ema_decay": 0.9,
                                                "log_every": 2})
    result = run_job(spec, echo=lambda *_: None)
    assert result.status == "finished"
    return spec, result


def test_train_writes_full_layout(trained):
    import torch

    spec, result = trained
    root = result.run_dir
    from launcher.core.layout import RunLayout, read_manifest, sha256_file

    lay = RunLayout.of(root)
    for p in (lay.run_yaml, lay.best_model, lay.model_json, lay.manifest, lay.checkpoint, lay.train_log,
              lay.metrics_jsonl, lay.artifacts / "best_model.model", lay.logs / "indices.json"):
        assert p.is_file(), p
    assert result.result["epochs_done"] == 2
    state = torch.load(lay.best_model, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    m = read_manifest(lay.manifest)
    assert m["backend"] == "mace" and m["weights"]["sha256"] == sha256_file(lay.best_model)
    assert m["metrics"]["force_rmse"] == pytest.approx(result.result["best_metrics"]["force_rmse"])
    assert m["heads"] == ["Default"] and m["r_max"] == 4.0 and m["data"]["train"]["sha256"]
    cfg = json.loads(lay.model_json.read_text())
    assert cfg["avg_num_neighbors"] > 0 and cfg["atomic_numbers"] == m["z_table"]
    recs = read_jsonl(lay.metrics_jsonl)
    val = [r for r in recs if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2]
    assert all({"loss", "energy_rmse_per_atom", "force_rmse", "lr", "time", "step"} <= set(r) for r in val)
    assert any(r["split"] == "train" for r in recs)
    idx = json.loads((lay.logs / "indices.json").read_text())
    assert idx["train"] == list(range(24)) and idx["val"] == list(range(8))
    ck = torch.load(lay.checkpoint, weights_only=True)
    assert ck["loop"]["epoch"] == 2 and ck["ema"] is not None


def test_evaluate_infer_and_mace_calculator_agree(trained, tmp_path, tiny_data):
    from launcher.job import run_job
    from launcher.core.layout import RunLayout

    spec, result = trained
    lay = RunLayout.of(result.run_dir)
    ev = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model_in=str(lay.manifest), data={"batch_size": 3},
                   train={"dtype": "float64"})
    run_job(ev, echo=lambda *_: None)
    out = tmp_path / "ev" / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_structures"] == 8 and metrics["force_rmse"] > 0 and metrics["energy_rmse_per_atom"] > 0
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("n_structures,n_atoms,energy_mae")
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [int(r["index"]) for r in rows] == list(range(8))
    forces = np.load(out / "predictions_forces.npz")
    assert forces["forces"].shape == (sum(int(r["natoms"]) for r in rows), 3)
    assert json.loads((tmp_path / "ev" / "logs" / "indices.evaluate.json").read_text()) == {"test": list(range(8))}

    # the exported mace .model gives the same energies through MACECalculator
    from data.lmdb_dataset import LmdbDataset
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(lay.artifacts / "best_model.model"), device="cpu", default_dtype="float64")
    ds = LmdbDataset(tiny_data["test"])
    start = 0
    for i in range(3):
        atoms = ds[i].to_atoms()
        atoms.calc = calc
        e = atoms.get_potential_energy()
        assert e == pytest.approx(float(rows[i]["energy"]), abs=1e-6 * len(atoms))
        np.testing.assert_allclose(atoms.get_forces(), forces["forces"][start:start + len(atoms)], atol=1e-5)
        start += len(atoms)

    # infer: predictions only, energy_only skips forces, the val split by choice
    inf = make_spec(tmp_path / "inf", tiny_data, task="infer", model_in=str(result.run_dir),
                    eval={"energy_only": True, "split": "val"}, train={"dtype": "float64"})
    run_job(inf, echo=lambda *_: None)
    iout = tmp_path / "inf" / "eval"
    assert not (iout / "metrics.json").exists() and not (iout / "predictions_forces.npz").exists()
    assert len(list(csv.DictReader(open(iout / "predictions.csv")))) == 8


def test_export_task_from_checkpoint(trained, tmp_path, tiny_data):
    import torch

    from launcher.job import run_job
    from launcher.core.layout import RunLayout, read_manifest

    spec, result = trained
    lay = RunLayout.of(result.run_dir)
    ex = make_spec(tmp_path / "ex", tiny_data, task="export", model_in=str(lay.checkpoint))
    run_job(ex, echo=lambda *_: None)
    out = RunLayout.of(tmp_path / "ex")
    ck = torch.load(lay.checkpoint, weights_only=True)
    state = torch.load(out.best_model, weights_only=True)
    # the checkpoint's EMA weights are what gets exported (they are what was evaluated)
    params = set(_param_names(ck))
    names = [n for n in ck["model"] if n in params]
    shadow = dict(zip(names, ck["ema"]["shadow_params"]))
    assert shadow and all(torch.equal(state[k], shadow[k].to(state[k].dtype)) for k in shadow)
    assert any(not torch.equal(shadow[k], ck["model"][k]) for k in shadow)
    assert all(torch.equal(state[k], ck["model"][k].to(state[k].dtype)) for k in state if k not in shadow)
    m = read_manifest(out.manifest)
    assert m["source_model"] == str(lay.checkpoint) and (out.artifacts / "best_model.model").is_file()


def _param_names(ck):
    from trainers.mace.model_config import build_model

    return [n for n, _ in build_model(ck["model_config"]).named_parameters()]


def test_bad_model_json_is_one_line_config_error(tmp_path, tiny_data):
    from launcher.core.errors import ConfigError
    from trainers.mace.backend import MaceBackend

    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"num_channels": 8, "learning_rate": 1}))
    spec = make_spec(tmp_path / "r", tiny_data, train={"input_json": str(bad)})
    problems = MaceBackend().check(spec)
    assert len(problems) == 1 and "unknown key 'learning_rate'" in problems[0]
    from launcher.job import run_job

    with pytest.raises(ConfigError, match="learning_rate"):
        run_job(spec, echo=lambda *_: None)
