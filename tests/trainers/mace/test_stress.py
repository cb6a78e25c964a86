"""Stress in the core trainer: ``train.stress_weight`` in the loss, stress errors in validation, evaluate and
the sweep summary, and the refusal of a stress weight on data without stress. Real mace-torch models on EMT
demo data (energy, forces and stress in ASE's sign convention, eV/Å^3)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.core.atomic import read_jsonl
from launcher.core.layout import RunLayout

from tests.launcher.test_cli import _heavy_modules_after

from .conftest import make_spec

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _train(root: Path, data, model_json, **train):
    from launcher.job import run_job

    spec = make_spec(root, data, train={"input_json": str(model_json), "epochs": 2, "log_every": 1, **train})
    result = run_job(spec, echo=lambda *_: None)
    assert result.status == "finished", result
    return spec, result


@pytest.fixture(scope="module")
def runs(tiny_data, tiny_model_json, tmp_path_factory):
    """The same seed and data, stress weight 10 and 0."""
    root = tmp_path_factory.mktemp("stress")
    return {w: _train(root / f"w{w:g}", tiny_data, tiny_model_json, stress_weight=w) for w in (10.0, 0.0)}


def _records(result, split):
    return [r for r in read_jsonl(RunLayout.of(result.run_dir).metrics_jsonl) if r["split"] == split]


def test_val_records_report_stress_and_the_weight_puts_it_in_the_loss(runs):
    v10, v0 = _records(runs[10.0][1], "val"), _records(runs[0.0][1], "val")
    assert [r["epoch"] for r in v10] == [1, 2]
    # the demo data has stress: reported with weight 0 too
    for r in v10 + v0:
        assert r["stress_rmse"] > 0 and 0 < r["stress_mae"] <= r["stress_rmse"]
    # val loss = E/atom MSE + F MSE + w x stress MSE
    for r, w in ((v10[-1], 10.0), (v0[-1], 0.0)):
        want = r["energy_rmse_per_atom"] ** 2 + r["force_rmse"] ** 2 + w * r["stress_rmse"] ** 2
        assert r["loss"] == pytest.approx(want, rel=1e-9)
    # first update, same seed, same weights and batch: the training loss of weight 10 adds the stress term
    t10, t0 = _records(runs[10.0][1], "train"), _records(runs[0.0][1], "train")
    assert t10[0]["step"] == t0[0]["step"] == 1 and t10[0]["loss"] > t0[0]["loss"]
    # ... and the updates differ from there on
    assert t10[-1]["loss"] != t0[-1]["loss"]
    log = RunLayout.of(runs[10.0][1].run_dir).train_log.read_text()
    assert "S_rmse=" in log


def test_manifest_and_sweep_summary_carry_stress(runs):
    from launcher.core.layout import read_manifest
    from launcher.summary import rows, to_csv

    spec, result = runs[10.0]
    m = read_manifest(RunLayout.of(result.run_dir).manifest)
    assert m["metrics"]["stress_rmse"] == pytest.approx(result.result["best_metrics"]["stress_rmse"])
    outcomes = [{"index": i, "state": "finished", "overrides": [f"train.stress_weight={w:g}"],
                 "run_dir": str(runs[w][1].run_dir)} for i, w in enumerate((10.0, 0.0))]
    columns, table = rows(outcomes)
    assert "val_stress_rmse" in columns and "val_stress_mae" in columns
    assert all(r["val_stress_rmse"] > 0 for r in table)
    assert "val_stress_rmse" in to_csv(columns, table).splitlines()[0]


def test_stress_only_training_lowers_the_stress_error(tiny_data, tiny_model_json, tmp_path):
    """Energy and force weights 0: only the stress term can move the weights, and the stress error falls."""
    from trainers.mace.loop import Trainer
    from trainers.mace.model_io import exact_jit
    from trainers.mace.predict import error_sums
    from trainers.api import JobContext
    import torch

    spec = make_spec(tmp_path / "s", tiny_data, train={"input_json": str(tiny_model_json), "epochs": 6,
                                                        "energy_weight": 0.0, "force_weight": 0.0,
                                                        "stress_weight": 1.0, "lr": 0.05})
    old = torch.get_default_dtype()
    with exact_jit("cpu"):
        tr = Trainer(JobContext(spec=spec, layout=RunLayout.of(spec.run_dir)))
        try:
            tr.setup()
            before = error_sums(tr.model, tr.val_graphs, batch_size=4, device=tr.device, compute_force=True)
            tr.train()
            after = error_sums(tr.model, tr.val_graphs, batch_size=4, device=tr.device, compute_force=True)
        finally:
            tr.close()
            torch.set_default_dtype(old)
    assert before[6] == after[6] == 9 * 8          # every val structure's 9 components
    rmse_before, rmse_after = np.sqrt(before[7] / before[6]), np.sqrt(after[7] / after[6])
    assert rmse_after < 0.9 * rmse_before, (rmse_before, rmse_after)


def test_structures_without_stress_weigh_zero_and_no_stress_costs_nothing(runs, tiny_data):
    """A split mixing labelled and unlabelled structures scores only the labelled; without any, no stress."""
    import torch

    from data.lmdb_dataset import LmdbDataset
    from trainers.mace import graphs
    from trainers.mace.model_config import build_model
    from trainers.mace.predict import error_sums, metrics_from_sums

    lay = RunLayout.of(runs[10.0][1].run_dir)
    cfg = json.loads(lay.model_json.read_text())
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model = build_model(cfg)
        model.load_state_dict(torch.load(lay.best_model, weights_only=True))
        ds = LmdbDataset(tiny_data["val"])
        structures = [ds[i] for i in range(len(ds))]
        for s in structures[::2]:
            s.stress = None
        table = graphs.atomic_table(cfg["atomic_numbers"])
        mixed = [graphs.to_graph(s, table, cfg["r_max"], ["Default"], "Default") for s in structures]
        assert [float(g.stress_weight) for g in mixed] == [0.0, 1.0] * 4
        s = error_sums(model, mixed, batch_size=3, device=torch.device("cpu"), compute_force=True)
        assert s[6] == 9 * 4 and s[7] > 0
        for st in structures:
            st.stress = None
        bare = [graphs.to_graph(st, table, cfg["r_max"], ["Default"], "Default") for st in structures]
        s = error_sums(model, bare, batch_size=3, device=torch.device("cpu"), compute_force=True)
        assert s[6] == s[7] == 0
        assert "stress_rmse" not in metrics_from_sums(s, energy_weight=1.0, force_weight=1.0)
    finally:
        torch.set_default_dtype(old)


def test_evaluate_writes_stress_metrics_and_predictions(runs, tiny_data, tmp_path):
    from data.lmdb_dataset import LmdbDataset
    from launcher.job import run_job
    from mace.calculators import MACECalculator

    lay = RunLayout.of(runs[10.0][1].run_dir)
    ev = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model_in=str(lay.manifest),
                   data={"batch_size": 3}, train={"dtype": "float64"})
    run_job(ev, echo=lambda *_: None)
    out = RunLayout.of(tmp_path / "ev").eval_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stress_rmse"] > 0 and metrics["stress_mae"] > 0
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header.index("stress_mae") == header.index("force_rmse") + 1
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    ds = LmdbDataset(tiny_data["test"])
    pred = np.zeros((len(rows), 3, 3))
    for k, r in enumerate(rows):
        for c, (a, b) in zip(("xx", "yy", "zz", "yz", "xz", "xy"), VOIGT):
            pred[k, a, b] = pred[k, b, a] = float(r[f"stress_{c}"])
    true = np.stack([ds[int(r["index"])].stress for r in rows])
    assert metrics["stress_rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - true) ** 2))), rel=1e-6)
    # the same stress, sign and units as mace's own ASE calculator gives for the exported model
    calc = MACECalculator(model_paths=str(lay.artifacts / "best_model.model"), device="cpu", default_dtype="float64")
    for k in range(2):
        atoms = ds[int(rows[k]["index"])].to_atoms()
        atoms.calc = calc
        voigt = atoms.get_stress(voigt=True)
        assert np.allclose([pred[k][a, b] for a, b in VOIGT], voigt, rtol=1e-5, atol=1e-7)


def _launch(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(BIN / "launch"), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_stress_weight_on_data_without_stress_is_refused(tiny_data, tmp_path):
    from data.lmdb_dataset import LmdbDataset
    from data.writer import write_lmdb

    ds = LmdbDataset(tiny_data["train"])
    structures = [ds[i] for i in range(len(ds))]
    for s in structures:
        s.stress = None
    bare = tmp_path / "nostress.lmdb"
    write_lmdb(structures, bare)
    run_dir = tmp_path / "run"
    args = ["backend=mace", "task=train", "device=cpu", f"run_dir={run_dir}", f"data.train={bare}",
            f"data.val={tiny_data['val']}", "train.epochs=1"]
    # refused by the launch CLI before anything runs, without importing torch (a sample record's bytes)
    line, out = _heavy_modules_after([*args, "train.stress_weight=10"], tmp_path)
    assert line == "HEAVY [] 2", line + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "train.stress_weight" in ln]
    assert len(lines) == 1 and str(bare) in lines[0] and "has none" in lines[0], out.stderr
    assert not run_dir.exists()
    # weight 0 (the default) trains on it; a dry run validates everything
    assert _launch([*args, "dry_run=true"], tmp_path).returncode == 0
    assert not run_dir.exists()


def test_readme_command_validates(tmp_path):
    """README's stress line (demo data, which has stress) passes preflight."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "train.stress_weight=" in ln and ln.startswith("launch "))
    args = line.split("#")[0].split()[1:]
    out = _launch([*args, "dry_run=true", "device=cpu", f"run_dir={tmp_path / 'r'}"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "stress_weight: 10" in out.stdout
